#!/usr/bin/env bash
# Batch padding on a GPU, side by side in one device call: the gateway's default (every batch
# padded to --max-batch-size), a few padded sizes with one ONNX Runtime session each, the same
# with a CUDA graph per size, and no padding at all, each under the same gpu_check load
# (ResNet50 fp16 and LeNet).
#
#   on the device:  source .gpu/unpack.sh && bash benchmarks/gpu_padding_check.sh cuda $GPU_EXTRA/repo $OUT
#   dry run here:   bash benchmarks/gpu_padding_check.sh cpu .gpu-check/repo /tmp/gpc --models lenet --seconds 1
#
# Any further arguments go to every `gpu_check run` (e.g. --models, --seconds). About 7 minutes
# on a GPU with the defaults below.
set -euo pipefail
device=$1 repo=$2 out=$3
shift 3
python=${PYTHON:-python3}
plan=(--precisions "${PRECISIONS:-fp16}" --batches 1,32,256 --concurrencies 1,32,256 --seconds 5)
declare -A variants=(
  [default]=""
  [sessions]="--allowed-batch-sizes 1,8,32,128,256 --session-per-batch-size"
  [graphs]="--allowed-batch-sizes 1,8,32,128,256 --cuda-graph"
  [none]="--allowed-batch-sizes none"
)
for name in default sessions graphs none; do
  echo "=== $name: ${variants[$name]:-(gateway defaults)}"
  "$python" -m benchmarks.gpu_check run --device "$device" --repository "$repo" --out "$out/$name" \
    --budget-s 150 "${plan[@]}" --gateway-args "${variants[$name]}" "$@"
done
