#!/bin/sh
# The second half of `make bench-quantized`: FP32 against INT8 through the HTTP API, side by
# side on one core (benchmarks/results/ab-int8-*.json): each model served from a copy of
# models/ whose default version is its FP32 one, and from one whose default is its INT8 one
# (benchmarks/repos.py pinned). ~6 minutes; run it on a quiet machine.
set -eu
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
REPOS=benchmarks/results/raw/pinned
set -x
for model in resnet-fashion mobilenetv2-imagenet; do
  case $model in mobilenet*) seconds=5;; *) seconds=2;; esac
  $PY -m benchmarks.repos pinned $REPOS/$model-fp32 $model 1
  $PY -m benchmarks.repos pinned $REPOS/$model-int8 $model 2
  $PY -m benchmarks.ab --model $model --concurrency 32 --rounds 5 --seconds $seconds \
    --variant fp32=tree,CNNSERVE_MODEL_DIR=$REPOS/$model-fp32 \
    --variant int8=tree,CNNSERVE_MODEL_DIR=$REPOS/$model-int8 \
    --output $OUT/ab-int8-${model%%-*}.json
done
