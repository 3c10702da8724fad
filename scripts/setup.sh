#!/usr/bin/env bash
# Installs every Debian package the build and the tests need, plus any named on the
# command line. Safe to run repeatedly: it only calls apt-get when something is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libabsl-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-format
  # civetweb (the server binary) too: libcivetweb-dev's CMake config refuses to load
  # unless /usr/bin/civetweb exists. prometheus brings promtool for the metrics tests.
  libcivetweb-dev civetweb prometheus
  # The gRPC services, and openssl for the TLS tests' certificates.
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler openssl
  python3 python3-pip
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
