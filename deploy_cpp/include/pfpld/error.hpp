// One error type for everything a user can get wrong (a missing file, a bad header, a box off the image, a
// contract JSON without a key): what() is one line that names the file or value and what was expected.
#pragma once
#include <stdexcept>
#include <string>

namespace pfpld {

struct Error : std::runtime_error {
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace pfpld
