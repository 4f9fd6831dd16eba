// A few lines of test support (no framework: the same binaries run under qemu for the ARM builds).
// Each test binary takes the fixtures folder and a case name; ctest runs one case per test.
#pragma once
#include <cmath>
#include <cstring>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace check {

inline int& failures() {
    static int n = 0;
    return n;
}

#define CHECK(cond)                                                                                     \
    do {                                                                                                \
        if (!(cond)) {                                                                                  \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond << "\n";               \
            ++check::failures();                                                                        \
        }                                                                                               \
    } while (0)

#define CHECK_MSG(cond, msg)                                                                            \
    do {                                                                                                \
        if (!(cond)) {                                                                                  \
            std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK failed: " #cond << ": " << msg << "\n"; \
            ++check::failures();                                                                        \
        }                                                                                               \
    } while (0)

inline std::vector<uint8_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": cannot open fixture (run make_fixtures.py first)");
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

template <typename T>
std::vector<T> read_array(const std::string& path) {
    std::vector<uint8_t> bytes = read_bytes(path);
    std::vector<T> out(bytes.size() / sizeof(T));
    std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
    return out;
}

inline nlohmann::json read_index(const std::string& folder) {
    std::ifstream in(folder + "/index.json");
    if (!in) throw std::runtime_error(folder + "/index.json: no fixtures (run make_fixtures.py first)");
    return nlohmann::json::parse(in);
}

// Expects `fn` to throw pfpld::Error (or a subclass) whose message contains `needle`, and nothing else.
template <typename ErrorType>
void expect_error(const std::function<void()>& fn, const std::string& needle) {
    try {
        fn();
        CHECK_MSG(false, "no error raised; expected one containing '" << needle << "'");
    } catch (const ErrorType& e) {
        const std::string what = e.what();
        CHECK_MSG(what.find(needle) != std::string::npos, "message '" << what << "' lacks '" << needle << "'");
        CHECK_MSG(what.find('\n') == std::string::npos, "message is not one line: '" << what << "'");
        std::cout << "  error as expected: " << what << "\n";
    }
}

inline int run(int argc, char** argv, const std::map<std::string, std::function<void(const nlohmann::json&, const std::string&)>>& cases) {
    if (argc != 3 || !cases.count(argv[2])) {
        std::cerr << "usage: " << argv[0] << " FIXTURES_DIR CASE; cases:";
        for (const auto& kv : cases) std::cerr << " " << kv.first;
        std::cerr << "\n";
        return 2;
    }
    try {
        const std::string folder = argv[1];
        cases.at(argv[2])(read_index(folder), folder);
    } catch (const std::exception& e) {
        std::cerr << "unexpected exception: " << e.what() << "\n";
        return 1;
    }
    if (failures()) std::cerr << failures() << " check(s) failed\n";
    return failures() ? 1 : 0;
}

}  // namespace check
