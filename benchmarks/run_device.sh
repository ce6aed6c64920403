#!/usr/bin/env bash
# One call on a lent GPU machine (see benchmarks/resnet18_cifar10.py's docstring): the full-width --gpu-full
# protocol and, beside it on the same GPU, the --cpu-full protocol (quarter width, all of CIFAR-10, 15 epochs) for
# when this session's CPU is busy with another benchmark. Both write their JSON after every run, so whatever
# finished before the call's time limit comes back under $OUT.
#
# Needs: data/cifar10_jpeg_packed.npz and the wheels the machine lacks in .whl/ (both git-ignored, named in
# `carry`). Usage on the device: bash benchmarks/run_device.sh BUDGET_SECONDS
set -u
budget="${1:-480}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
mkdir -p "$OUT/cpu_full" .cache
python3 benchmarks/resnet18_cifar10.py --cpu-full --no-cpu --budget-s "$budget" --cache-dir /tmp/cifar_a \
    --dense-cache .cache/dense_cpu_full --out-dir "$OUT/cpu_full" > "$OUT/cpu_full.log" 2>&1 &
cpu_full=$!
python3 benchmarks/resnet18_cifar10.py --gpu-full \
    --runs dense,callback_15,callback_4.5,pruning_15,small_dense_15,tltorch_tucker_15,small_dense_kd_15 \
    --budget-s "$budget" --cache-dir /tmp/cifar_b --out-dir "$OUT" > "$OUT/gpu_full.log" 2>&1
echo "gpu_full exit $?"
wait "$cpu_full"
echo "cpu_full exit $?"
grep -E "test accuracy|skipped|Error" "$OUT/gpu_full.log" | tail -20
grep -E "test accuracy|skipped|Error" "$OUT/cpu_full.log" | tail -20
