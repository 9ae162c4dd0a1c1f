#!/bin/sh
# One-shot trainer: populate the model repository, unless it already holds a servable model.
# A servable model is a models.config plus, for TRAIN_MODEL, a version directory that has both the
# SavedModel (TF Serving) and model.onnx (the gateway). Set FORCE_TRAIN=1 to train a new version.
set -eu

repository="${REPOSITORY:-/models}"
model="${TRAIN_MODEL:-lenet}"
dataset="${TRAIN_DATASET:-mnist}"
epochs="${TRAIN_EPOCHS:-5}"

populated() {
    [ -s "$repository/models.config" ] || return 1
    for version in "$repository/$model"/*/; do
        if [ -f "${version}saved_model.pb" ] && [ -f "${version}model.onnx" ]; then
            return 0
        fi
    done
    return 1
}

if [ "${FORCE_TRAIN:-0}" != "1" ] && populated; then
    echo "trainer: $repository already holds a servable '$model'; nothing to do (FORCE_TRAIN=1 retrains)"
    exit 0
fi

echo "trainer: training $model on $dataset for $epochs epochs into $repository"
python -m training train --model "$model" --dataset "$dataset" --epochs "$epochs" --repository "$repository"

# ResNet50 (ImageNet) is large (about 7 GB of RAM to convert); only on request.
if [ "${EXPORT_RESNET50:-0}" = "1" ]; then
    python -m training export --model resnet50_imagenet --repository "$repository"
fi

populated || { echo "trainer: export finished but $repository/$model has no servable version" >&2; exit 1; }
echo "trainer: done"
