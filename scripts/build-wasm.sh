#!/usr/bin/env bash
# Builds every shipped module in slr-policy-wasm for wasm32-unknown-unknown
# (release: opt-level s, LTO, panic=abort, stripped) and copies the artifacts to
# slr-policy-wasm/modules/<name>.wasm.
#
# Toolchain: rustup's wasm32 target if installed, else Debian's rustc-web
# (DESIGN.md §9; install with .ci/install-wasm-toolchain.sh).
#
# The build runs in a generated copy of the two crates (target/wasm/src) with its
# own Cargo.lock seeded from the workspace's, so Debian's cargo (a different
# version) never rewrites the workspace Cargo.lock, and the shared release profile
# stays as it is.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODULES=(least_load weighted_cost proximity consistent_hash time_of_day sfq strict_priority least_slack)
# `scripts/build-wasm.sh NAME...` builds only those modules (e.g. a new one).
if [ "$#" -gt 0 ]; then MODULES=("$@"); fi
TARGET=wasm32-unknown-unknown
WORK="$ROOT/target/wasm"
SRC="$WORK/src"
OUT="$ROOT/slr-policy-wasm/modules"

die() { printf 'build-wasm: error: %s\n' "$*" >&2; exit 1; }

# ---- choose a toolchain ----------------------------------------------------
unset RUSTUP_TOOLCHAIN RUSTC RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CARGO_BUILD_TARGET
BUILD_STD=()
# Reproducible paths; a 64 KiB shadow stack instead of the default 1 MiB (policies
# use a few KiB), so an instance needs 2-4 pages of memory, not 17.
COMMON_FLAGS="--remap-path-prefix=$SRC=/pronto --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo -C link-arg=-zstack-size=65536"
if command -v rustup >/dev/null 2>&1 \
    && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  TOOLCHAIN="rustup ($(rustc --version))"
  CARGO=(cargo)
  export RUSTFLAGS="$COMMON_FLAGS"
elif [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] && command -v wasm-ld-19 >/dev/null 2>&1 \
    && [ -d /usr/lib/rustlib/src/rust/library/core ]; then
  TOOLCHAIN="debian rustc-web ($(/usr/bin/rustc --version))"
  CARGO=(/usr/bin/cargo)
  # rustup's proxies come first on PATH; pin Debian's compiler explicitly.
  export RUSTC=/usr/bin/rustc
  export RUSTC_BOOTSTRAP=1
  export RUSTFLAGS="-C linker=wasm-ld-19 $COMMON_FLAGS"
  BUILD_STD=(-Zbuild-std=core,alloc)
else
  die "no wasm32 toolchain found.
  With rustup:   rustup target add $TARGET
  On Debian:     bash .ci/install-wasm-toolchain.sh
                 (apt-get install -y rustc-web cargo-web rust-web-src lld-19)"
fi
echo "build-wasm: toolchain: $TOOLCHAIN"

# ---- generate the out-of-tree workspace -------------------------------------
mkdir -p "$SRC" "$OUT"
for crate in sdk slr-policy-wasm; do
  rm -rf "${SRC:?}/$crate"
  mkdir -p "$SRC/$crate"
  cp -r "$ROOT/$crate/src" "$SRC/$crate/src"
  # Dev-dependencies are for native tests only; dropping them keeps the wasm
  # build's dependency graph (and lock) to what the modules link.
  awk '/^\[/ { skip = ($0 ~ /^\[dev-dependencies/) } !skip' \
    "$ROOT/$crate/Cargo.toml" > "$SRC/$crate/Cargo.toml"
done
{
  # Keep only the root's [workspace.*] tables (package fields, dependency
  # versions, lints) and replace the member list.
  awk '
    /^\[/ { keep = ($0 ~ /^\[workspace/) }
    keep && /^members *= *\[/ { in_members = 1 }
    keep && in_members { if ($0 ~ /\]/) { in_members = 0; print "members = [\"sdk\", \"slr-policy-wasm\"]" } ; next }
    keep
  ' "$ROOT/Cargo.toml"
  cat <<'TOML'

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = true
debug = false
incremental = false
TOML
} > "$SRC/Cargo.toml"
if [ -f "$ROOT/Cargo.lock" ] && [ ! -f "$SRC/Cargo.lock" ]; then
  cp "$ROOT/Cargo.lock" "$SRC/Cargo.lock"
fi

# ---- build one artifact per module ------------------------------------------
cd "$SRC"
for module in "${MODULES[@]}"; do
  echo "build-wasm: $module"
  "${CARGO[@]}" rustc --quiet --release --lib -p slr-policy-wasm \
    --features "$module" --crate-type cdylib --target "$TARGET" \
    --target-dir "$WORK/target" "${BUILD_STD[@]}"
  artifact="$WORK/target/$TARGET/release/slr_policy_wasm.wasm"
  [ -f "$artifact" ] || die "$module: cargo succeeded but $artifact is missing"
  cp "$artifact" "$OUT/$module.wasm"
  printf 'build-wasm: %-16s %7d bytes  %s\n' "$module" "$(wc -c < "$OUT/$module.wasm")" \
    "$(sha256sum "$OUT/$module.wasm" | cut -c1-16)"
done
echo "build-wasm: ${#MODULES[@]} modules in ${OUT#"$ROOT"/}"
