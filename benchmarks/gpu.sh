#!/usr/bin/env bash
# The GPU checks and benchmarks of issue 7 as one prepared run (a lent GPU's time is short):
# the CUDA tests, then training-step benchmarks, whole-LM throughput and end-to-end trials.
# Needs torch with CUDA, pytest and pyyaml; not optuna, hydra or mlflow (the graph cells come from
# a CPU run's JSON). Results go to $OUT (default runs/gpu).
#
#     bash benchmarks/gpu.sh            # about 5 minutes on an H100/H200
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-runs/gpu}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1  # one log of everything; the numbers also as JSON
CELLS_JSON=benchmarks/results/cpu_small_2threads.json

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

echo "== tests on the GPU"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/compile/test_triton.py tests/compile/test_cudagraphs.py tests/compile/test_probe.py tests/compile/test_policy.py tests/cell/test_known.py \
    2>&1 | tail -25

echo "== training step, float32 (TF32 off), both sizes"
timeout 240 python3 benchmarks/cells.py --device cuda --torch-kernels --graph-cells "$CELLS_JSON" --repeats 15 \
    --json "$OUT/gpu_cells.json" 2>&1

echo "== training step, bf16 autocast, large size"
timeout 90 python3 benchmarks/cells.py --device cuda --bf16 --sizes 128x256x512 --graph-cells "$CELLS_JSON" \
    --repeats 11 --json "$OUT/gpu_cells_bf16.json" 2>&1

echo "== whole char-LM, the GPU trainer's sizes (hidden 1024, batch 128 x 150, bf16, TF32)"
timeout 90 python3 benchmarks/lm_throughput.py --device cuda --hidden 1024 --batch 128 --seq 150 --bf16 \
    --tf32 --cells lstm,darts_v2 --steps 20 --json "$OUT/gpu_lm.json" 2>&1

echo "== trials end to end (conf/trainer/gpu.yaml, 200 steps)"
timeout 150 python3 benchmarks/trial.py --trainer gpu --steps 200 --cells lstm,darts_v2 --variants default,torch \
    --json "$OUT/gpu_trial.json" 2>&1
