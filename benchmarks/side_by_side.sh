#!/bin/sh
# `make bench-ab`: the side-by-side tables of docs/performance.md (benchmarks/results/ab-*.json;
# each run also prints its Markdown table). ~30 minutes; run it on a quiet machine.
#   before       service/ at 3f0f134, the last commit before issue 10's changes
#   before-api   service/ at cc95978, before the one-pass multipart parser and lean route
#   after        the working tree
# and the guard of issues 15 to 21 (hardening, one data plane, explanations, trust, INT8,
# traces): never slower than before them, beside the bare ASGI ceiling, inline and with its
# image work in a thread as the hardening requires (bare-offload) (ab-guard-*.json)
#   before-15    service/ at cb25619, the last commit before those issues
# Every server runs version 1 of the model (FP32; benchmarks/inputs.py model_repository).
set -eu
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
BEFORE=ref:3f0f134
BEFORE_API=ref:cc95978
BEFORE_15=ref:cb25619
set -x
$PY -m benchmarks.ab --model lenet5-fashion --concurrency 1 32 --rounds 4 --seconds 2 \
  --variant before=$BEFORE --variant before-api=$BEFORE_API --variant after=tree \
  --variant plain=plain --variant litserve=litserve --output $OUT/ab-lenet.json
$PY -m benchmarks.ab --model lenet5-fashion --images 64 --concurrency 1 8 --rounds 3 \
  --seconds 3 --variant before=$BEFORE --variant before-api=$BEFORE_API --variant after=tree \
  --variant plain=plain --output $OUT/ab-lenet-64.json
$PY -m benchmarks.ab --model mobilenetv2-imagenet --concurrency 1 32 --rounds 3 --seconds 5 \
  --variant before=$BEFORE --variant after=tree \
  --variant plain=plain --variant litserve=litserve --output $OUT/ab-mobilenet.json
$PY -m benchmarks.ab --model mobilenetv2-imagenet --concurrency 8 32 --rounds 3 --seconds 5 \
  --variant decode-on-batcher=tree --variant decode-in-pool=tree,CNNSERVE_DECODE_THREADS=2 \
  --output $OUT/ab-mobilenet-decode.json
$PY -m benchmarks.ab --model lenet5-fashion --concurrency 1 32 --rounds 4 --seconds 2 \
  --variant bare=bare --variant plain=plain --variant after=tree \
  --output $OUT/ab-ceiling.json
$PY -m benchmarks.ab --model lenet5-fashion --concurrency 1 32 --rounds 5 --seconds 2 \
  --variant before-15=$BEFORE_15 --variant after=tree --variant bare=bare \
  --variant bare-offload=bare,BARE_OFFLOAD=1 --variant plain=plain \
  --output $OUT/ab-guard-lenet.json
$PY -m benchmarks.ab --model mobilenetv2-imagenet --concurrency 1 32 --rounds 5 --seconds 4 \
  --variant before-15=$BEFORE_15 --variant after=tree --output $OUT/ab-guard-mobilenet.json
# MobileNetV2 at c=32 once more, with more turns: its single turns spread by +-15 % here.
$PY -m benchmarks.ab --model mobilenetv2-imagenet --concurrency 32 --rounds 7 --seconds 4 \
  --variant before-15=$BEFORE_15 --variant after=tree --output $OUT/ab-guard-mobilenet-repeat.json
# And with 11 rounds and an identical twin: the guard against the noise between two servers.
$PY -m benchmarks.ab --model mobilenetv2-imagenet --concurrency 32 --rounds 11 --seconds 4 \
  --variant before-15=$BEFORE_15 --variant after=tree --variant after-again=tree \
  --output $OUT/ab-guard-mobilenet-twin.json
# The direct classify route, the counter request ids and the vectorised OOD decision (8e2f7d6)
# against the commit before them.
$PY -m benchmarks.ab --model lenet5-fashion --concurrency 1 32 --rounds 9 --seconds 2 \
  --variant head=ref:b9b4cdf --variant after=tree --output $OUT/ab-direct-route.json
# Which of those issues the LeNet-5 difference comes from: the service after the hardening
# (96e2997), after the one data plane (674cf6c), after trust per request (ced2403).
$PY -m benchmarks.ab --model lenet5-fashion --concurrency 1 32 --rounds 5 --seconds 2 \
  --variant before-15=$BEFORE_15 --variant hardened=ref:96e2997 --variant one-plane=ref:674cf6c \
  --variant trust=ref:ced2403 --variant after=tree --output $OUT/ab-guard-lenet-steps.json
# The floor under issue 19's target: the bare function with its image work batched on one
# thread, and with the cheapest form of every feature the issue keeps (ab-floor.json).
$PY -m benchmarks.ab --model lenet5-fashion --concurrency 1 32 --rounds 7 --seconds 2 \
  --variant bare=bare --variant bare-offload=bare,BARE_OFFLOAD=1 \
  --variant bare-batch=bare,BARE_OFFLOAD=batch --variant bare-features=bare,BARE_FEATURES=1 \
  --variant bare-features-batch=bare,BARE_FEATURES=1,BARE_OFFLOAD=batch --variant after=tree \
  --output $OUT/ab-floor.json
# Issue 19's target, 75 % of the bare function at c=32 with every feature kept: many rounds,
# a second identical server for the noise, and the service before the hot-path rewrite.
$PY -m benchmarks.ab --model lenet5-fashion --concurrency 32 --rounds 15 --seconds 2 \
  --variant bare=bare --variant after=tree --variant after-again=tree \
  --variant before-19=ref:414bcf9 --output $OUT/ab-target.json
# Once more: at the threshold, one run says little on this VM.
$PY -m benchmarks.ab --model lenet5-fashion --concurrency 32 --rounds 15 --seconds 2 \
  --variant bare=bare --variant after=tree --variant after-again=tree \
  --variant before-19=ref:414bcf9 --output $OUT/ab-target-repeat.json
$PY -m benchmarks.ab --model lenet5-fashion --concurrency 32 --rounds 15 --seconds 2 \
  --variant bare=bare --variant after=tree --variant after-again=tree \
  --variant before-sweep=ref:160aae2 --output $OUT/ab-target-sweep.json
# MobileNetV2 before and after the hot-path rewrite (fd4369c its first commit), with an A/A.
$PY -m benchmarks.ab --model mobilenetv2-imagenet --concurrency 32 --rounds 7 --seconds 4 \
  --variant before-19=ref:414bcf9 --variant first=ref:fd4369c --variant after=tree \
  --variant after-again=tree --output $OUT/ab-rewrite-mobilenet.json
# Where cnnserve's time went before the hot path was rewritten (at 414bcf9, the commit the
# patches were cut against), by taking parts out (benchmarks/ablations/: not changes to
# keep), beside a second identical server: the noise between two processes (ab-ablation.json).
$PY -m benchmarks.ab --model lenet5-fashion --concurrency 32 --rounds 15 --seconds 2 \
  --variant after=ref:414bcf9 --variant after-again=ref:414bcf9 \
  --variant no-middleware=patch:benchmarks/ablations/no-middleware.patch@414bcf9 \
  --variant no-multipart=patch:benchmarks/ablations/no-multipart.patch@414bcf9 \
  --variant no-postprocess=patch:benchmarks/ablations/no-postprocess.patch@414bcf9 \
  --variant all-three=patch:benchmarks/ablations/all-three.patch@414bcf9 --output $OUT/ab-ablation.json
