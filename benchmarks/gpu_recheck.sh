#!/usr/bin/env bash
# The GPU re-check after the pipeline rework (issue 24), as run on the lent GPU through the device tool, in two
# calls (each under the 10-minute limit of a call):
#   A: FlashAttention-3 built with FP8; the DiT forward in bf16 and the recommended FP8 set-up, 1 and 2 persons
#      (bench_fp8; bench_transformer after it), plus the audio adapter's projections in FP8 (goal: the 480P FP8
#      forward <= 2.0 s); tests/test_cuda.py
#   B: the fast preset end to end (bench_fast_preset) with UniPC beside Euler; the whole pipeline in low VRAM
#      (bench_low_vram_pipeline)
# On a device other than the H200 of the earlier numbers, the code they were measured with (OLD, commit a0c637d)
# is timed in the same calls.
# Needs, in the repository root: .whl/ (the wheels the device lacks: diffusers, torchao, peft, soundfile, cffi,
# pycparser, einops, pyloudnorm (the pipelines' loudness normalisation), pytest, pluggy, iniconfig, pygments; and for A fa3-src.tgz, see build_flash_attention_3.sh,
# for B the flash_attn_3 wheel A returns) and .old/ (`git archive a0c637d src benchmarks | tar -x -C .old`).
#   usage: bash benchmarks/gpu_recheck.sh A|B (or ONE, then LOWVRAM)        (results in $OUT/STAGE.tgz, the log in $OUT/STAGE.log)
set -uo pipefail
STAGE=$1
RES=/tmp/res_$STAGE
mkdir -p "$RES"
exec > >(tee "$OUT/$STAGE.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
pack() { tar -czf "$OUT/$STAGE.tgz" -C "$RES" . ; }
step() {  # step NAME SECONDS CMD...: runs CMD under a time limit, its output under $RES/NAME, then packs the results
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T))"; mkdir -p "$RES/$name"
  timeout "$limit" "$@" --out "$RES/$name" || echo "=== $name exited $?"
  pack
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch, diffusers, torchao; print(torch.__version__, diffusers.__version__, torchao.__version__)"

# The earlier numbers were taken on an H200: on another device the OLD code is re-measured in the same call.
OLD=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || echo yes)

case $STAGE in
A)
  FA3_FP8=1 bash benchmarks/build_flash_attention_3.sh .whl/fa3-src.tgz /tmp/fa3 && cp /tmp/fa3/*.whl "$OUT"/ \
    && python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/fa3/*.whl
  step new_fp8 200 python3 benchmarks/bench_fp8.py --jobs bf16@480p1,fp8+fa3fp8@480p1,fp8+fa3fp8+audio@480p1,\
bf16@480p2,fp8+fa3fp8@480p2,fp8+fa3fp8+audio+mean:audio_attn.to_out@480p1 --budget-s 170
  [ -n "$OLD" ] && step old_fp8 90 python3 .old/benchmarks/bench_fp8.py --jobs bf16@480p1,fp8+fa3fp8@480p1
  mkdir -p "$RES/test_cuda"
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs --junitxml "$RES/test_cuda/junit.xml" \
    || echo "=== test_cuda exited $?"
  pack
  step new_transformer 100 python3 benchmarks/bench_transformer.py --setups sdpa+compile --persons 1,2 --warmup 1 \
    --repeats 2
  ;;
ONE)  # everything that matters most in one call, for a session with device time for one call only
  FA3_FP8=1 bash benchmarks/build_flash_attention_3.sh .whl/fa3-src.tgz /tmp/fa3 && cp /tmp/fa3/*.whl "$OUT"/ \
    && python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/fa3/*.whl
  step new_fp8 175 python3 benchmarks/bench_fp8.py --jobs bf16@480p1,fp8+fa3fp8@480p1,fp8+fa3fp8+audio@480p1,\
bf16@480p2,fp8+fa3fp8@480p2 --budget-s 140
  [ -n "$OLD" ] && step old_fp8 60 python3 .old/benchmarks/bench_fp8.py --jobs fp8+fa3fp8@480p1
  step new_fast_preset 215 python3 benchmarks/bench_fast_preset.py --budget-s 150 --setups bf16+latents,\
fp8+fa3fp8,fp8+fa3fp8+unipc+steps:6
  if [ "$SECONDS" -lt 500 ]; then
    mkdir -p "$RES/test_cuda"
    timeout $((570 - SECONDS)) python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs \
      --junitxml "$RES/test_cuda/junit.xml" || echo "=== test_cuda exited $?"
    pack
  fi
  ;;
LOWVRAM)
  step low_vram_pipeline 280 python3 benchmarks/bench_low_vram_pipeline.py --setups resident,low+tiled
  ;;
B)
  step new_fast_preset 250 python3 benchmarks/bench_fast_preset.py --budget-s 190 --setups bf16+latents,\
fp8+fa3fp8,fp8+fa3fp8+unipc+steps:6,fp8+fa3fp8+latents+steps:16
  [ -n "$OLD" ] && step old_fast_preset 110 python3 .old/benchmarks/bench_fast_preset.py --setups fp8+fa3fp8
  step low_vram_pipeline 230 python3 benchmarks/bench_low_vram_pipeline.py --setups resident,low+tiled
  ;;
esac
echo "=== done $(date +%T)"
