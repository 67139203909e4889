# Benchmarks (docs/performance.md). Included by the Makefile. Not tests: numbers, written to
# benchmarks/results/ (JSON and README.md); server logs and raw samples under results/raw/.
#
#   make bench          the whole matrix: one core for the server, one for wrk; then both
#                       cores for the server; then explanations (bench-explain) and FP32
#                       against INT8 (make bench-quantized). BENCH_ARGS passes options to the
#                       matrix (e.g. BENCH_ARGS="--quick" for a 2-minute smoke run).
#   make bench-memory   cnnserve's RSS over 5 minutes at concurrency 64
#   make bench-profile  py-spy: where one request's time goes, before and after issue 10
#   make bench-ab       the side-by-side runs of docs/performance.md (benchmarks/side_by_side.sh)
#   make bench-costs    what trust and tracing cost classify, side by side (benchmarks/costs.sh)
#   make bench-explain  what explanations cost (benchmarks/explain.py; also the last part of
#                       make bench), ~2 minutes: results/explain.json and explain.md
#
# Run them on a quiet machine: the server is pinned to core 0 and wrk to core 1, but nothing
# stops other processes from using those cores (results/README.md records the load average).

BENCH_ARGS ?=
BENCH_STAMP := $(VENV)/.stamp-bench

.PHONY: bench bench-memory bench-profile bench-ab bench-explain bench-costs bench-deps

# litserve (the bench extra) and py-spy; wrk from Debian.
$(BENCH_STAMP): pyproject.toml $(VENV)/.stamp-dev
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/pip install -q py-spy
	touch $@

bench-deps: $(BENCH_STAMP)
	@scripts/apt-install.sh dataset-fashion-mnist wrk

bench: bench-deps
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)
	$(MAKE) --no-print-directory bench-quantized

bench-memory: bench-deps
	$(BIN)/python -m benchmarks.memory $(BENCH_ARGS)

bench-profile: bench-deps
	$(BIN)/python -m benchmarks.profile $(BENCH_ARGS)

bench-explain: bench-deps
	$(BIN)/python -m benchmarks.explain $(BENCH_ARGS)

bench-ab: bench-deps
	PY=$(BIN)/python benchmarks/side_by_side.sh

bench-costs: bench-deps
	PY=$(BIN)/python benchmarks/costs.sh
