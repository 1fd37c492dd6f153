#!/usr/bin/env bash
# Builds FlashAttention-3 (Hopper) for the one case the 14B DiT's self-attention needs: forward, bf16, head dim 128,
# no mask/varlen/paging/softcap/FP8 (every other instantiation is switched off, so the build takes minutes, not
# hours); FA3_FP8=1 keeps the FP8 forward as well (the `flash3_fp8` self-attention kernel, models/attention_processor.py).
# Used on the lent H100 and H200, whose image has nvcc and torch but no FA3 and no network:
#   SRC: a .tgz holding flash-attention/hopper and flash-attention/csrc/cutlass/include (the cutlass commit that
#        flash-attention pins as its submodule) and flash-attention/README.md (setup.py reads it), made on a machine
#        with network access, e.g.:
#          git clone https://github.com/Dao-AILab/flash-attention && git -C flash-attention submodule update --init csrc/cutlass
#          tar -czf fa3-src.tgz flash-attention/README.md flash-attention/hopper flash-attention/csrc/cutlass/include
#        or, from bare clones or mirrors (no submodule step), at the pinned commits:
#          mkdir -p fa/flash-attention/csrc/cutlass && git -C FA_GIT archive 0251105a README.md hopper | tar -x -C fa/flash-attention
#          git -C CUTLASS_GIT archive 7127592069c2 include | tar -x -C fa/flash-attention/csrc/cutlass
#          tar -czf fa3-src.tgz -C fa flash-attention                                            (2.7 MB)
#        (this repository's numbers: flash-attention 0251105, cutlass 7127592; with FA3_FP8=1 the build took 102 s
#        on the lent H200, 16 cores, and made a 1.7 MB wheel).
#   DEST: where the wheel (flash_attn_3, with the flash_attn_interface module diffusers' "_flash_3" backend imports)
#        is written.
# usage: bash benchmarks/build_flash_attention_3.sh SRC.tgz DEST_DIR
set -euo pipefail
SRC=$(realpath "$1"); DEST=$(realpath -m "$2")
WORK=${FA3_WORK:-/tmp/fa3build}
rm -rf "$WORK" && mkdir -p "$WORK" "$DEST" && tar -xzf "$SRC" -C "$WORK"
cd "$WORK/flash-attention/hopper"
DISABLED="BACKWARD SPLIT PAGEDKV APPENDKV LOCAL SOFTCAP PACKGQA FP16 VARLEN CLUSTER HDIM64 HDIM96 HDIM192 HDIM256 SM80"
DISABLED="$DISABLED HDIMDIFF64 HDIMDIFF192"
if [ "${FA3_FP8:-0}" != "1" ]; then DISABLED="$DISABLED FP8"; fi
for feature in $DISABLED; do
  export "FLASH_ATTENTION_DISABLE_${feature}=TRUE"
done
export FLASH_ATTENTION_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-16} NVCC_THREADS=${NVCC_THREADS:-4}
start=$(date +%s)
if ! python3 -m pip wheel . --no-build-isolation --no-deps -w "$DEST" > "$WORK/build.log" 2>&1; then
  grep -v "ptxas info\|bytes stack frame\|Used [0-9]* registers\|Compiling entry\|Function properties" "$WORK/build.log" | tail -60
  echo "FlashAttention-3 build failed"; exit 1
fi
grep -v "ptxas info\|bytes stack frame\|Used [0-9]* registers\|Compiling entry\|Function properties" "$WORK/build.log" | tail -200 > "$DEST/fa3_build_tail.log"
echo "FlashAttention-3 built in $(( $(date +%s) - start )) s:"; ls -la "$DEST"/*.whl
