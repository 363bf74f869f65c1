#!/usr/bin/env bash
# Every check that only a GPU can make, as one script for one call on a lent GPU machine (device tool), ≈ 8 minutes:
#   1. build unlearn_fast._C with its CUDA sources against the machine's own torch;
#   2. the test files with CUDA/Triton cases (each GPU backend against the pure-PyTorch reference, the GPU scoring
#      pass against the CPU one);
#   3. the GPU benchmark profile: scoring on the MSCOCO UNet (every engine path against the reference fp32 loop),
#      Fisher fused vs vmap, the fused loss ops.
# Results go to $OUT (pytest logs and pytest-benchmark JSON). The machine's image has torch and Triton but not
# diffusers: carry its wheel (and its pure-Python dependencies the image lacks) in .gpu_wheels/, made here with
#   pip download diffusers==0.42.1 --no-deps -d .gpu_wheels
# and run with the device tool's carry: [".gpu_wheels"].
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -m pip install --no-index --find-links .gpu_wheels diffusers > "$OUT/install.log" 2>&1
python3 -m pip install --no-build-isolation --no-deps -e . >> "$OUT/install.log" 2>&1 || { tail -30 "$OUT/install.log"; exit 1; }
python3 -c "import unlearn_fast.ops as o; print(o.available_backends('cuda'))" | tee "$OUT/backends.txt"

timeout 240 python3 -m pytest -q -x tests/ops/test_noise.py tests/ops/test_noisy_input.py tests/ops/test_denoising_loss.py \
    tests/ops/test_linear_fisher.py tests/ops/test_unet_forward.py tests/methods/test_attributor.py -k "cuda or triton or gpu" 2>&1 | tail -40 | tee "$OUT/tests.log"

for suite in bench_scoring.py bench_linear_fisher.py bench_fused_loss.py; do
    name=${suite%%.py*}
    timeout 150 python3 -m pytest -q "benchmarks/$suite" --benchmark-json "$OUT/$name.json" \
        --benchmark-columns=mean,stddev,min,rounds --benchmark-group-by=group 2>&1 | tail -30 | tee "$OUT/$name.log"
done
