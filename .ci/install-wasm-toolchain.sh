#!/usr/bin/env bash
# Installs a toolchain that scripts/build-wasm.sh can use to build the shipped
# wasm modules (DESIGN.md §9). Idempotent: does nothing if rustup already has the
# wasm32 target or Debian's rustc-web packages are installed.
set -euo pipefail

TARGET=wasm32-unknown-unknown
PACKAGES=(rustc-web cargo-web rust-web-src lld-19)

if command -v rustup >/dev/null 2>&1 \
    && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  echo "install-wasm-toolchain: rustup has $TARGET; nothing to install"
  exit 0
fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$package")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-wasm-toolchain: ${PACKAGES[*]} already installed"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "install-wasm-toolchain: error: need root to apt-get install ${missing[*]}" >&2
  echo "  (or: rustup target add $TARGET)" >&2
  exit 1
fi
echo "install-wasm-toolchain: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-wasm-toolchain: done ($(/usr/bin/rustc --version))"
