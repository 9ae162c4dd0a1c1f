"""training: datasets, models, training, evaluation and export to the model repository."""

import os

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX512-VNNI, AVX512-BF16 or
# AMX; elsewhere (AVX2-only CPUs) its Eigen kernels trained ResNet50 about 6x slower
# (benchmarks/RESULTS.md). Set before TensorFlow is imported; TF_ENABLE_ONEDNN_OPTS=0 still wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
