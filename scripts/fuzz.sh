#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS_PER_TARGET seconds (default 60), one after
# the other, and prints per target the executions done and whether it found a crash.
# Exits non-zero if any target crashed (or could not run).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Environment:
#   FUZZ_SANITIZER    address (default) or none. If the address sanitizer build fails, the
#                     script falls back to none (plain libFuzzer coverage-guided fuzzing).
#   CARGO_TARGET_DIR  where to build (default fuzz/target).
#   CARGO_BUILD_JOBS  parallel build jobs, as for any cargo build.
#
# The toolchain may be stable: RUSTC_BOOTSTRAP=1 lets it take the -Z flags cargo-fuzz passes.
# Seeds come from fuzz/corpus/<target> and fuzz/regressions/<target>; new inputs libFuzzer
# finds go to $CARGO_TARGET_DIR/fuzz-corpus/<target>, crashes to fuzz/artifacts/<target>.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

secs=${1:-60}
shift || true
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz || cargo install cargo-fuzz || exit 2
fi

target_dir=${CARGO_TARGET_DIR:-$root/fuzz/target}
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
logs="$target_dir/fuzz-logs"
mkdir -p "$logs"

cd fuzz
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

sanitizer=${FUZZ_SANITIZER:-address}
build() {
  cargo fuzz build -s "$sanitizer" --target-dir "$target_dir" "$@"
}
if ! build >"$logs/build.log" 2>&1; then
  if [ "$sanitizer" = none ]; then
    tail -40 "$logs/build.log" >&2
    echo "build failed (log: $logs/build.log)" >&2
    exit 2
  fi
  echo "build with -s $sanitizer failed; retrying with -s none (log: $logs/build.log)" >&2
  sanitizer=none
  if ! build >"$logs/build.log" 2>&1; then
    tail -40 "$logs/build.log" >&2
    echo "build failed (log: $logs/build.log)" >&2
    exit 2
  fi
fi
bin_dir="$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release"
echo "sanitizer: $sanitizer, ${secs}s per target, targets: ${targets[*]}"

failed=0
summary=()
for t in "${targets[@]}"; do
  work="$target_dir/fuzz-corpus/$t"
  mkdir -p "$work" "artifacts/$t"
  seeds=()
  for d in "corpus/$t" "regressions/$t"; do
    [ -d "$d" ] && seeds+=("$d")
  done
  before=$(ls "artifacts/$t" | sort)
  log="$logs/$t.log"
  echo "== $t"
  # The binaries built above, run directly: no rebuild between targets while the tree changes.
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0} "$bin_dir/$t" \
    -artifact_prefix="$root/fuzz/artifacts/$t/" -max_total_time="$secs" -timeout=10 \
    -print_final_stats=1 "$work" "${seeds[@]}" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
  if [ -z "$execs" ]; then
    execs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -1)
  fi
  new=$(comm -13 <(echo "$before") <(ls "artifacts/$t" | sort) | sed "s|^|fuzz/artifacts/$t/|")
  if [ $rc -eq 0 ] && [ -z "$new" ]; then
    result="no crash"
  else
    failed=1
    result="CRASH (exit $rc)${new:+: $(echo $new)}"
    grep -m1 -B2 -A25 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)|deadly signal" "$log" | head -40
    echo "full log: $log"
  fi
  line=$(printf '%-18s %12s execs  %s' "$t" "${execs:-?}" "$result")
  echo "$line"
  summary+=("$line")
done

echo
echo "== summary (${secs}s per target, sanitizer $sanitizer)"
printf '%s\n' "${summary[@]}"
exit $failed
