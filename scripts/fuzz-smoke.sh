#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for a bounded time, failing on
# the first crash, panic, timeout or out-of-memory (CI runs it after the tests
# with the defaults; a developer fuzzes longer with FUZZ_SECONDS=600).
#
#   scripts/fuzz-smoke.sh                 # every target, 20 s each
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh module_verify cert_san
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 20)
#   FUZZ_JOBS       targets run at once (default: the number of cores, at most 4)
#   FUZZ_SANITIZER  cargo-fuzz --sanitizer (default none; see below)
#   FUZZ_CORPUS     where each target's corpus grows (default fuzz/corpus/<target>,
#                   cargo-fuzz's own place, ignored by git; nothing in it is needed)
#
# Toolchain: stable Rust with RUSTC_BOOTSTRAP=1 so it takes cargo-fuzz's -Z
# flags; no nightly is needed. The sanitizer defaults to none: libFuzzer's
# coverage guidance and crash detection (panics abort) work without it, every
# crate here but wasmtime's is safe Rust, and AddressSanitizer triples the build
# (Cranelift alone) for findings that cannot happen in safe code.
# FUZZ_SANITIZER=address builds and runs with ASAN on this same toolchain.
#
# Seeds: the shipped policy modules (slr-policy-wasm/modules/*.wasm) for the
# module targets; everything else starts from nothing. A crash leaves its input
# in fuzz/artifacts/<target>/ and the log says how to replay it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

SECONDS_EACH="${FUZZ_SECONDS:-20}"
SANITIZER="${FUZZ_SANITIZER:-none}"
CORES="$(nproc 2>/dev/null || echo 2)"
JOBS="${FUZZ_JOBS:-$((CORES < 4 ? CORES : 4))}"
CORPUS_ROOT="${FUZZ_CORPUS:-$ROOT/fuzz/corpus}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

die() { printf 'fuzz-smoke: error: %s\n' "$*" >&2; exit 1; }
[[ "$SECONDS_EACH" =~ ^[0-9]+$ && "$SECONDS_EACH" -gt 0 ]] || die "FUZZ_SECONDS must be a positive integer"
[[ "$JOBS" =~ ^[0-9]+$ && "$JOBS" -gt 0 ]] || die "FUZZ_JOBS must be a positive integer"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

mapfile -t ALL < <(cargo fuzz list)
[ "${#ALL[@]}" -gt 0 ] || die "cargo fuzz list found no targets"
if [ "$#" -gt 0 ]; then
  for t in "$@"; do
    printf '%s\n' "${ALL[@]}" | grep -qx "$t" || die "no fuzz target $t (have: ${ALL[*]})"
  done
  TARGETS=("$@")
else
  TARGETS=("${ALL[@]}")
fi

# fuzz/Cargo.lock is committed: refuse to build anything else.
cargo metadata --manifest-path fuzz/Cargo.toml --locked --format-version 1 >/dev/null

# Every target, always: they share the fuzz package's dependencies (the bulk
# of the build), and a target nobody runs must still build.
start=$SECONDS
cargo fuzz build --sanitizer "$SANITIZER"
echo "fuzz-smoke: built ${#ALL[@]} targets in $((SECONDS - start)) s (sanitizer: $SANITIZER)"

seeds_for() {
  case "$1" in
    module_verify | module_format) echo "$ROOT/slr-policy-wasm/modules" ;;
  esac
}

LOGS="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-smoke.XXXXXX")"
trap 'rm -rf "$LOGS"' EXIT

run_one() {
  local t="$1" corpus="$CORPUS_ROOT/$1" seeds
  seeds="$(seeds_for "$t")"
  mkdir -p "$corpus"
  # The corpus comes first: libFuzzer writes new inputs to the first directory
  # only, so the seeds are read, never written.
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: a leak or an
  # unbounded allocation fails the run rather than the machine.
  cargo fuzz run --sanitizer "$SANITIZER" "$t" "$corpus" ${seeds:+"$seeds"} -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$LOGS/$t.log" 2>&1
}

summary() {
  local log="$LOGS/$1.log" execs rate cov
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)"
  printf 'fuzz-smoke: %-16s ok  %10s execs  %8s/s  cov %s\n' "$1" "${execs:-?}" "${rate:-?}" "${cov:-?}"
}

failed=()
running=()
finish() {
  local t="$1" pid="$2"
  if wait "$pid"; then
    summary "$t"
  else
    failed+=("$t")
    echo "fuzz-smoke: $t FAILED; the end of its log:"
    tail -n 60 "$LOGS/$t.log"
    local artifact
    artifact="$(grep -o 'fuzz/artifacts/[^ ]*' "$LOGS/$t.log" | tail -1 || true)"
    if [ -n "$artifact" ]; then
      echo "fuzz-smoke: replay with: RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer $SANITIZER $t $artifact"
    fi
  fi
}

start=$SECONDS
declare -A pid_of=()
for t in "${TARGETS[@]}"; do
  while [ "${#running[@]}" -ge "$JOBS" ]; do
    # Wait for the oldest run; each is bounded by FUZZ_SECONDS, so they end in
    # about the order they started.
    finish "${running[0]}" "${pid_of[${running[0]}]}"
    running=("${running[@]:1}")
  done
  run_one "$t" &
  pid_of[$t]=$!
  running+=("$t")
done
for t in "${running[@]}"; do
  finish "$t" "${pid_of[$t]}"
done
echo "fuzz-smoke: ran ${#TARGETS[@]} targets ${SECONDS_EACH} s each, $JOBS at once, in $((SECONDS - start)) s"

if [ "${#failed[@]}" -gt 0 ]; then
  die "failing targets: ${failed[*]}"
fi
