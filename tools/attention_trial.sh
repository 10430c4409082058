#!/usr/bin/env bash
# One device call for an attention kernel change: compile, check (every tile shape unless CHECK_VARIANTS narrows it),
# memcheck and racecheck on small shapes, and time the warp-specialised shapes beside SDPA.
# Usage on the GPU machine, from the repo root: QWEN35_COMMIT=<sha> bash tools/attention_trial.sh
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 tools/attention_gpu.py --precompile --tiny --check --variants "${CHECK_VARIANTS:-}" > "$OUT/check.log" 2>&1
echo "check rc $?"; grep -iE "fail|error|cases|tiny" "$OUT/check.log" | tail -8
for tool in memcheck racecheck; do
  timeout 150 compute-sanitizer --tool $tool --report-api-errors no --error-exitcode 3 \
    python3 tools/attention_gpu.py --tiny --variants "${SAN_VARIANTS:-}" > "$OUT/$tool.log" 2>&1
  echo "$tool rc $?"; tail -2 "$OUT/$tool.log"
done
python3 tools/attention_gpu.py --bench ${SCALING:-} --variants "${BENCH_VARIANTS:-ws}" --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc $?"; grep -E "card:|queued|->" "$OUT/bench.log" | grep -v "sdpa_EFF\|sdpa_FLASH\|varlen" | sed -E 's/ +/ /g' | cut -c1-150
