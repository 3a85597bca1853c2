#!/usr/bin/env bash
# Timed training of the paper-scale circuit CNN (cnn-paper: 128-256-512-512 channels, four
# 3x3 conv stages, amplifiers) on CIFAR-10 with the torch backend on a CUDA GPU.
#
# usage: benchmarks/gpu_cnn_paper.sh DATA_DIR OUT_DIR [TRAIN_IMAGES] [TEST_IMAGES] [SECONDS]
#   DATA_DIR holds cifar-10-batches-py/; the run stops after SECONDS (default 400) and
#   leaves OUT_DIR/checkpoint.pt and, when the epoch finished, OUT_DIR/metrics.json.
set -euo pipefail
data=$1; out=$2; n_train=${3:-9600}; n_test=${4:-1000}; limit=${5:-400}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, numba; print('torch', torch.__version__, 'numba', numba.__version__, torch.cuda.get_device_name(0))"
export PYTHONUNBUFFERED=1
start=$(date +%s.%N)
timeout "$limit" python3 -m epsim.train --model cnn-paper --dataset cifar10 --data-dir "$data" \
    --backend torch --train-subset "$n_train" --test-subset "$n_test" --epochs 1 \
    --checkpoint-interval 30 --out "$out" || echo "stopped after ${limit} s (exit $?)"
echo "wall $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
