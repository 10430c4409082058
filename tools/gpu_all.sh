#!/usr/bin/env bash
# One device call: the GPU test suite, the vision-tower benchmark, sanitizer on the fp32 attention.
# Usage on the GPU machine, from the repo root: QWEN35_COMMIT=<sha> bash tools/gpu_all.sh [tests|tower|all]
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
what="${1:-all}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
if [ "$what" = tests ] || [ "$what" = all ]; then
  timeout "${TEST_TIMEOUT:-330}" python3 -m pytest -m "gpu or sim" tests property_tests -q -p no:cacheprovider \
    --maxfail=25 -rf 2>&1 | tee "$OUT/gpu_tests.txt" | grep -v "^SKIPPED"
fi
if [ "$what" = sanitize ] || [ "$what" = all ]; then
  timeout "${SAN_TIMEOUT:-90}" compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 3 \
    python3 tools/attention_gpu.py --tiny 2>&1 | tail -4 | tee "$OUT/sanitizer.txt"
fi
if [ "$what" = tower ] || [ "$what" = all ]; then
  timeout "${TOWER_TIMEOUT:-240}" python3 tools/vision_tower_gpu.py --out "$OUT" --plot "$OUT/vision_tower.png" \
    2>&1 | tee "$OUT/tower.txt"
fi
