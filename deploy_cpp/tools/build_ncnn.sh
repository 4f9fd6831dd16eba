#!/usr/bin/env bash
# Builds ncnn's C++ library once from the ncnn PyPI sdist (no Debian package exists) into a cache that
# later builds reuse: deploy_cpp's CMake finds it with find_package(ncnn CONFIG) and ncnn_DIR set to the
# path this script prints as its last stdout line. Everything else it says goes to stderr.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy_cpp/tools/build_ncnn.sh [options] [-- extra cmake arguments]

Prints the ncnn_DIR (the folder of ncnnConfig.cmake) of a cached static ncnn build as its last stdout
line, building it first if the cache has none for this version and these options.

  --version V       ncnn release, e.g. 1.0.20261020 (default: the `ncnn` package installed in $PYTHON,
                    so that the C++ and the Python ncnn are the same release)
  --cache-dir DIR   cache root (default: ${PFPLD_CACHE:-$HOME/.cache/pfpld}/ncnn)
  --toolchain FILE  CMake toolchain file for a cross build (e.g. deploy_cpp/cmake/toolchains/...);
                    ncnn's own defaults then pick the target's ISA options
  --jobs N          parallel compile jobs (default: nproc)
  --force           rebuild even if the cache entry exists
  -h, --help        this text

Environment: PYTHON (default .venv/bin/python: reads the ncnn version, runs pip download),
PFPLD_CACHE, CXX (the compiler; part of the cache key). Needs cmake, a C++ compiler, faketime and pip.

Cache layout under the cache root:
  sdist/ncnn-<version>.tar.gz         the downloaded sdist, kept for rebuilds
  <version>-<key>/                    one install prefix per version and build key (options, layer list,
                                      compiler, toolchain, extra arguments): include/ncnn, lib/libncnn.a,
                                      lib/cmake/ncnn, pfpld-build.txt, .pfpld-complete (stamp)
EOF
}

say() { echo "build_ncnn: $*" >&2; }
die() { echo "build_ncnn: error: $*" >&2; exit 2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
layers_file="$repo/deploy_cpp/cmake/ncnn_layers.txt"
cache_root="${PFPLD_CACHE:-$HOME/.cache/pfpld}/ncnn"
version="" toolchain="" force=0 extra_args=()
jobs=$(nproc 2>/dev/null || echo 2)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi

while (($#)); do
    case "$1" in
        --version) version=${2:?--version needs a value}; shift 2 ;;
        --cache-dir) cache_root=${2:?--cache-dir needs a value}; shift 2 ;;
        --toolchain) toolchain=${2:?--toolchain needs a value}; shift 2 ;;
        --jobs) jobs=${2:?--jobs needs a value}; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra_args=("$@"); break ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

if [[ -z "$version" ]]; then
    version=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("ncnn"))' 2>/dev/null) \
        || die "cannot read the ncnn version from $PYTHON (install the ncnn package, or pass --version 1.0.YYYYMMDD)"
fi
# ncnn's setup.py names the release by its build day: 1.0.20261020 was built on 2026-10-20.
[[ "$version" =~ ^[0-9]+\.[0-9]+\.([0-9]{8})$ ]] || die "ncnn version '$version' is not <major>.<minor>.<YYYYMMDD>"
build_day=${BASH_REMATCH[1]}

[[ -f "$layers_file" ]] || die "$layers_file is missing"
needed_layers=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$layers_file" | grep -v '^$' | sort -u)
[[ -n "$needed_layers" ]] || die "$layers_file names no layer"

if [[ -n "$toolchain" ]]; then
    [[ -f "$toolchain" ]] || die "toolchain file $toolchain does not exist"
    toolchain=$(cd "$(dirname "$toolchain")" && pwd)/$(basename "$toolchain")
fi

options=(
    -DCMAKE_BUILD_TYPE=Release
    -DNCNN_VULKAN=OFF -DNCNN_BUILD_TOOLS=OFF -DNCNN_BUILD_EXAMPLES=OFF -DNCNN_BUILD_BENCHMARK=OFF
    -DNCNN_PYTHON=OFF -DNCNN_BUILD_TESTS=OFF -DNCNN_SHARED_LIB=OFF
    # threads through the compiler's OpenMP (libgomp with g++); ncnnConfig.cmake finds it again for users
    -DNCNN_OPENMP=ON -DNCNN_SIMPLEOMP=OFF
    # our fp32 parity runs with bf16 off (convert/runtimes.py), and bf16 kernels are a large part of the build
    -DNCNN_BF16=OFF
)
if [[ -z "$toolchain" && "$(uname -m)" =~ ^(x86_64|amd64)$ ]]; then
    # One ISA variant instead of runtime dispatch over SSE2 ... AVX-512: AVX2 + FMA + F16C runs on every
    # x86-64 CI machine of today (Intel Xeon, AMD Zen 4). F16C stays on because Python ncnn uses it for
    # fp16 storage on such machines. XOP and FMA4 are AMD-only extensions that Zen dropped.
    options+=(
        -DNCNN_RUNTIME_CPU=OFF -DNCNN_SSE2=ON -DNCNN_AVX=ON -DNCNN_FMA=ON -DNCNN_F16C=ON -DNCNN_AVX2=ON
        -DNCNN_XOP=OFF -DNCNN_FMA4=OFF -DNCNN_AVXVNNI=OFF -DNCNN_AVXVNNIINT8=OFF -DNCNN_AVXVNNIINT16=OFF
        -DNCNN_AVXNECONVERT=OFF -DNCNN_AVX512=OFF -DNCNN_AVX512VNNI=OFF -DNCNN_AVX512BF16=OFF
        -DNCNN_AVX512FP16=OFF
    )
fi

cxx=${CXX:-c++}
if [[ -n "$toolchain" ]]; then
    compiler_id="toolchain $(sha256sum <"$toolchain" | cut -c1-16)"
else
    command -v "$cxx" >/dev/null || die "no C++ compiler '$cxx' (apt-get install g++, or set CXX)"
    compiler_id="$(command -v "$cxx") $("$cxx" --version | head -n1)"
fi
# Bump when the build recipe changes in a way the options do not show.
recipe=1
key=$(printf '%s\n' "recipe $recipe" "${options[@]}" "${extra_args[@]}" "$compiler_id" $needed_layers \
      | sha256sum | cut -c1-10)
prefix="$cache_root/$version-$key"
stamp="$prefix/.pfpld-complete"

if [[ $force == 0 && -f "$stamp" ]]; then
    echo "$prefix/lib/cmake/ncnn"
    exit 0
fi

command -v cmake >/dev/null || die "cmake is missing (apt-get install cmake)"
mkdir -p "$cache_root/sdist" || die "cannot create the cache folder $cache_root"
# Two builds of the same entry (parallel CI jobs) wait for each other instead of racing.
exec 9>"$cache_root/.lock-$version-$key"
if command -v flock >/dev/null && ! flock -n 9; then
    say "waiting for another build of $version-$key"
    flock 9
fi
if [[ $force == 0 && -f "$stamp" ]]; then
    echo "$prefix/lib/cmake/ncnn"
    exit 0
fi

# Build folders of killed runs (a day old: no build takes that long) go; ours is removed on any exit.
find "$cache_root" -maxdepth 1 -name '.build-*' -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
work=$(mktemp -d "$cache_root/.build-$version-$key.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM HUP
started=$SECONDS

sdist="$cache_root/sdist/ncnn-$version.tar.gz"
if [[ ! -f "$sdist" ]]; then
    command -v faketime >/dev/null || die "faketime is missing (apt-get install faketime): ncnn's setup.py names its version by today's date"
    say "downloading the ncnn $version sdist"
    # Without build isolation pip reuses this Python's setuptools (5 s instead of about a minute).
    isolation=()
    "$PYTHON" -c 'import setuptools' 2>/dev/null && isolation=(--no-build-isolation)
    faketime "${build_day:0:4}-${build_day:4:2}-${build_day:6:2} 12:00:00" \
        "$PYTHON" -m pip download "ncnn==$version" --no-deps --no-binary :all: "${isolation[@]}" \
        -d "$work/download" >&2 \
        || die "pip download of the ncnn==$version sdist failed (output above)"
    [[ -f "$work/download/ncnn-$version.tar.gz" ]] || die "pip saved no ncnn-$version.tar.gz in $work/download"
    mv "$work/download/ncnn-$version.tar.gz" "$sdist"
fi

mkdir "$work/src"
tar -xzf "$sdist" -C "$work/src" --strip-components=1 || die "cannot unpack $sdist (delete it to download again)"
all_layers=$(sed -n 's/^ncnn_add_layer(\([A-Za-z0-9_]*\).*/\1/p' "$work/src/src/CMakeLists.txt")
[[ -n "$all_layers" ]] || die "no ncnn_add_layer(...) lines in the sdist's src/CMakeLists.txt"
for layer in $needed_layers; do
    grep -qx "$layer" <<<"$all_layers" || die "$layers_file: ncnn $version has no layer '$layer'"
done
layer_options=()
for layer in $all_layers; do
    state=OFF
    grep -qx "$layer" <<<"$needed_layers" && state=ON
    layer_options+=("-DWITH_LAYER_${layer,,}=$state")
done

toolchain_option=()
[[ -n "$toolchain" ]] && toolchain_option=("-DCMAKE_TOOLCHAIN_FILE=$toolchain")
say "building ncnn $version with $(wc -w <<<"$needed_layers") of $(wc -w <<<"$all_layers") layers, $jobs jobs, into $prefix"
# Configured for the final prefix (ncnn.pc names it), installed into $work, then renamed into place, so that
# the cache never holds a half-written entry.
cmake -S "$work/src" -B "$work/build" -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib \
    -DNCNN_VERSION="$build_day" "${options[@]}" "${layer_options[@]}" "${toolchain_option[@]}" \
    "${extra_args[@]}" >&2 || die "cmake could not configure ncnn $version (output above)"
cmake --build "$work/build" -j "$jobs" >&2 || die "ncnn $version failed to compile (output above)"
cmake --install "$work/build" --prefix "$work/install" >&2 || die "cmake --install of ncnn $version failed"

{
    echo "ncnn $version, built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - started)) s by deploy_cpp/tools/build_ncnn.sh"
    echo "compiler: $compiler_id"
    echo "toolchain: ${toolchain:-none}"
    echo "options: ${options[*]} ${extra_args[*]}"
    echo "layers:" $needed_layers
} >"$work/install/pfpld-build.txt"
touch "$work/install/.pfpld-complete"
if [[ -e "$prefix" ]]; then
    mv "$prefix" "$work/replaced"
fi
mv "$work/install" "$prefix"
say "done in $((SECONDS - started)) s"
echo "$prefix/lib/cmake/ncnn"
