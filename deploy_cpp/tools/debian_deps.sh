#!/usr/bin/env bash
# The Debian packages deploy_cpp builds and tests with: installs the missing ones when run as root with apt-get
# (CI, a fresh machine), otherwise names them in one line and exits 2.
set -euo pipefail
# package : a file that shows it is installed
wanted=(
  "cmake:/usr/bin/cmake"
  "g++:/usr/bin/g++"
  "nlohmann-json3-dev:/usr/include/nlohmann/json.hpp"
  "faketime:/usr/bin/faketime"
  "g++-arm-linux-gnueabihf:/usr/bin/arm-linux-gnueabihf-g++"
  "g++-aarch64-linux-gnu:/usr/bin/aarch64-linux-gnu-g++"
  "qemu-user:/usr/bin/qemu-arm"
)
missing=()
for entry in "${wanted[@]}"; do
  [ -e "${entry#*:}" ] || missing+=("${entry%%:*}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "debian_deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  exit 0
fi
echo "deploy_cpp needs the Debian packages: ${missing[*]} (apt-get install ${missing[*]})" >&2
exit 2
