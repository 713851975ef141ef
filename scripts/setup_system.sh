#!/usr/bin/env bash
# System packages the test suite needs (run as root on a fresh Debian machine; a no-op when present):
#   g++-aarch64-linux-gnu  cross-compiles TVM artifacts for the aarch64 / Android presets
#   qemu-user              runs those artifacts here to verify their numerics
set -euo pipefail
need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "convhub setup: missing ${need[*]}; install them as root (apt-get install ${need[*]}); aarch64 tests will skip" >&2
  exit 0
fi
echo "convhub setup: apt-get install ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
