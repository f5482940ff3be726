#!/usr/bin/env bash
# Run every fuzz target for a set time (default 600 s each), two at a time,
# adding what they find to fuzz/corpus/<target>/. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets
# it pass the sanitizer flags. A crash leaves its input in
# fuzz/artifacts/<target>/: fix it, copy the input into the corpus (CI
# replays the corpus, tests/tests/fuzz_corpus.rs), and run again.
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(schedule agent_config controller_config tool_output wal_name start_order archive pages)
command -v cargo-fuzz >/dev/null || { echo "fuzz/run.sh: cargo-fuzz is not installed: cargo install cargo-fuzz" >&2; exit 2; }
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do cargo fuzz build -O "$t" 2>&1 | tail -1; done
run() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -max_len=65536 -artifact_prefix="artifacts/$t/" -print_final_stats=1 > "artifacts/$t.log" 2>&1 \
    && echo "$t: $(grep -E 'stat::number_of_executed_units' "artifacts/$t.log" | awk '{print $2}') executions, nothing found" \
    || { echo "$t: FOUND something, see fuzz/artifacts/$t/ and fuzz/artifacts/$t.log"; return 1; }
}
status=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" & a=$!
  b=""
  if [ $((i + 1)) -lt ${#targets[@]} ]; then run "${targets[i+1]}" & b=$!; fi
  wait $a || status=1
  [ -z "$b" ] || wait $b || status=1
done
exit $status
