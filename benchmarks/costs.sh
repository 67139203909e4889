#!/bin/sh
# `make bench-costs`: what trust and tracing cost classify, side by side on one core
# (benchmarks/results/ab-trust-*.json, ab-tracing-*.json; docs/trust.md, docs/observability.md).
# ~15 minutes; run it on a quiet machine.
#   trust:   the shipped models (temperature, out-of-distribution detector) against the same
#            models without those facts (benchmarks/repos.py without-trust)
#   tracing: off (the default) against on, every request sampled and one in ten, exporting
#            OTLP/HTTP to a sink that drops the spans (benchmarks/otlp_sink.py, on wrk's core)
set -eu
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results
UNTRUSTED=benchmarks/results/raw/models-without-trust
SINK_PORT=${SINK_PORT:-4399}
$PY -m benchmarks.repos without-trust $UNTRUSTED
taskset -c 1 $PY -m benchmarks.otlp_sink --port $SINK_PORT &
SINK=$!
trap 'kill $SINK' EXIT
TRACED=tree,OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$SINK_PORT
SAMPLED=$TRACED,OTEL_TRACES_SAMPLER=parentbased_traceidratio,OTEL_TRACES_SAMPLER_ARG=0.1
set -x
for model in lenet5-fashion mobilenetv2-imagenet; do
  case $model in lenet5*) seconds=2; rounds=5;; *) seconds=5; rounds=5;; esac
  $PY -m benchmarks.ab --model $model --concurrency 1 32 --rounds $rounds --seconds $seconds \
    --variant trusted=tree --variant untrusted=tree,CNNSERVE_MODEL_DIR=$UNTRUSTED \
    --output $OUT/ab-trust-${model%%-*}.json
  $PY -m benchmarks.ab --model $model --concurrency 1 32 --rounds $rounds --seconds $seconds \
    --variant untraced=tree --variant traced=$TRACED,OTEL_TRACES_SAMPLER=always_on \
    --variant traced-10%=$SAMPLED \
    --output $OUT/ab-tracing-${model%%-*}.json
done
