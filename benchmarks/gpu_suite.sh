#!/usr/bin/env bash
# Everything that needs a GPU, in one go (issues #6 and #8): the GPU tests, then the speed benchmarks.
#
#   bash benchmarks/gpu_suite.sh OUT [MMAUDIO_SRC]
#
# OUT receives one folder per benchmark and gpu_tests.log. MMAUDIO_SRC (a checkout of hkchengrex/MMAudio with
# einops and torchdiffeq installed) adds the official-loop comparison of benchmarks/mmaudio_speed.py.
# Roughly 15-25 minutes on one H100. Assumes the project is installed with a CUDA torch and triton.
set -uo pipefail
OUT="${1:?usage: gpu_suite.sh OUT [MMAUDIO_SRC]}"
SRC="${2:-}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.csv"

# 1. correctness on the device: Triton kernels, fused / CUDA-graph / streams / stacked sampling vs eager, fp16/bf16
python -m pytest -q tests/test_gpu.py tests/test_kernels.py 2>&1 | tee "$OUT/gpu_tests.log"

# 2. per-step cost by mode (naive, batched, stacked, fused, streams, graphs, compiled) at batch 1/4/16,
#    embedded model and MMAudio-S; forward share and peak memory
python benchmarks/speed.py --large --compile --out "$OUT/speed" 2>&1 | tee "$OUT/speed.log"

# 3. fused combine-and-update kernel vs unfused torch ops, bandwidth vs the roofline (H100 SXM: 3350 GB/s)
python benchmarks/fused_step.py --out "$OUT/fused_step" --roofline-gbps "${ROOFLINE_GBPS:-3350}" --png 2>&1 |
  tee "$OUT/fused_step.log"

# 4. MMAudio, 8 s clips, bf16, 25 Euler steps: CFG and HG (MMAudio-S as the bad model) vs the official loop
if [ -n "$SRC" ]; then
  python benchmarks/mmaudio_speed.py --official "$SRC" --variant large_44k --bad-variant small_44k \
    --device cuda --dtype bf16 --batches 1,8 --out "$OUT/mmaudio_speed" 2>&1 | tee "$OUT/mmaudio_speed.log"
fi

# 5. data-set throughput vs batch size
python benchmarks/throughput.py --device cuda --procs 1 --out "$OUT/throughput" 2>&1 | tee "$OUT/throughput.log"
