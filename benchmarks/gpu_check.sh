#!/usr/bin/env bash
# The GPU checks of the HypLoRA core, as one script for a session that is lent a GPU (about 5 minutes on an H100):
#   1. the branch's tests on CUDA: fused == literal (values, gradients), finite for norms 0..1e8 in fp32/bf16/fp16;
#   2. the speed/memory benchmark in bf16 at in = out = 4096, r = 32 (branch and training step);
#   3. the branch alone in fp16;
#   4. the autocast matrix on CUDA (model dtype x autocast x input scaling: tests, then the max errors per cell);
#   5. the benchmark with the forwards under bf16 autocast on a float32 model (what Trainer(bf16=True) runs): the
#      HypLoRA / LoRA training-step ratio under autocast;
#   6. exact δ on the GPU (issue 17): the pruned sweep at n = 1000 and 2000, and the largest n done in 30 s;
#   7. greedy decoding of SmolLM2-135M on the GPU, traced: prefill vs decoding steps against the fp32 matmul bound.
# Needs a CUDA build of torch and `pip install -e .[dev]`. Output: stdout, and $OUT/gpu_check.log when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-/tmp}/gpu_check.log"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  HYPLORA_TEST_DEVICE=cuda python -m pytest -q -p no:xdist tests/test_adapter.py
  python benchmarks/bench_adapter.py --device cuda --dtype bfloat16 --dim 4096 --tokens 8192
  python benchmarks/bench_adapter.py --device cuda --dtype float16 --dim 4096 --tokens 8192 --skip-step
  HYPLORA_TEST_DEVICE=cuda python -m pytest -q -p no:xdist tests/test_precision.py -k "literal_form or finite"
  python benchmarks/precision_matrix.py --device cuda
  python benchmarks/bench_adapter.py --device cuda --autocast bf16 --dim 4096 --tokens 8192
  python benchmarks/bench_delta.py --sizes 0 --exact-sizes 1000,2000 --every-max-n 0 --repeats 1 --largest-in 30 --device cuda
  python benchmarks/bench_eval.py --device cuda --items 256 --batch-size 64 --trace
} 2>&1 | tee "$log"
