#!/usr/bin/env bash
# Builds the fast path's tc programs (router-core/bpf/*.c) with clang for
# `-target bpf` into router-core/bpf/<name>.o, the objects router-core embeds
# (include_bytes!) and loads with aya. The objects are committed, like the wasm
# modules, so a build of the daemon needs no clang.
#
#   scripts/build-bpf.sh           rebuild the objects in place
#   scripts/build-bpf.sh --check   rebuild in a scratch folder and compare with
#                                  the committed objects (CI)
#
# --check fails when an object differs although it was built by the same clang
# as the committed one (router-core/bpf/objects.lock records the version): the
# committed object is then stale (a source changed, the object did not). When
# the clang version differs, the bytes may differ for that reason alone: the
# rebuilt object replaces the committed one (and is what the tests then load),
# with a warning.
#
# Toolchain (Debian): apt-get install clang llvm libbpf-dev (.ci/run does it).
# Builds are reproducible: no absolute path is recorded, DWARF is stripped and
# BTF (which aya needs) kept.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$ROOT/router-core/bpf"
PROGRAMS=(router_fast host_decap)
LOCK="$DIR/objects.lock"
CHECK=0
if [ "${1:-}" = "--check" ]; then CHECK=1; fi

die() { printf 'build-bpf: error: %s\n' "$*" >&2; exit 1; }

CLANG="${CLANG:-clang}"
STRIP="${LLVM_STRIP:-llvm-strip}"
command -v "$CLANG" >/dev/null 2>&1 || die "no clang (apt-get install clang llvm libbpf-dev)"
command -v "$STRIP" >/dev/null 2>&1 || die "no llvm-strip (apt-get install llvm)"
[ -f /usr/include/bpf/bpf_helpers.h ] || die "no bpf/bpf_helpers.h (apt-get install libbpf-dev)"
MULTIARCH="$(gcc -print-multiarch 2>/dev/null || dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
VERSION="$("$CLANG" --version | head -n1)"

OUT="$DIR"
if [ "$CHECK" = 1 ]; then
  OUT="$(mktemp -d)"
  trap 'rm -rf "$OUT"' EXIT
fi

cd "$DIR"
for p in "${PROGRAMS[@]}"; do
  # -mcpu=v3: 32-bit jumps and ALU (kernel >= 5.1); -g for BTF, then DWARF out.
  "$CLANG" -O2 -g -target bpf -mcpu=v3 -Wall -Werror \
    -I"/usr/include/$MULTIARCH" -I. \
    -fdebug-compilation-dir=. -fdebug-prefix-map="$DIR"=. \
    -c "$p.c" -o "$OUT/$p.o"
  "$STRIP" -g "$OUT/$p.o"
done

if [ "$CHECK" = 0 ]; then
  {
    echo "# Written by scripts/build-bpf.sh: the compiler and the objects it built."
    echo "clang: $VERSION"
    for p in "${PROGRAMS[@]}"; do
      echo "$p.o: $(sha256sum "$p.o" | cut -d' ' -f1)"
    done
  } > "$LOCK"
  for p in "${PROGRAMS[@]}"; do
    printf 'build-bpf: %-14s %6d bytes  %s\n' "$p.o" "$(wc -c < "$p.o")" "$(sha256sum "$p.o" | cut -c1-16)"
  done
  exit 0
fi

locked="$(sed -n 's/^clang: //p' "$LOCK" 2>/dev/null || true)"
stale=0
for p in "${PROGRAMS[@]}"; do
  if cmp -s "$OUT/$p.o" "$DIR/$p.o"; then
    echo "build-bpf: $p.o identical to the committed object"
  elif [ "$locked" = "$VERSION" ]; then
    echo "build-bpf: $p.o differs from the committed object built by the same clang: rebuild and commit it (scripts/build-bpf.sh)" >&2
    stale=1
  else
    echo "build-bpf: warning: $p.o differs; committed by '$locked', rebuilt by '$VERSION': using the rebuilt object" >&2
    cp "$OUT/$p.o" "$DIR/$p.o"
  fi
done
[ "$stale" = 0 ] || exit 1
