# Reliability and security (docs/reliability.md). Included by the Makefile.
#
#   make reliability          the hostile-input corpus, fuzzing, faults, soak and access tests
#   make reliability-report   render docs/reliability.md's table from the last runs' summary
#   make soak                 the soak test for SOAK_S seconds (default 600), with its figures
#
# `make test` runs tests/reliability with the rest (its soak lasts 30 s). Every test writes
# what it tried and measured to test-artifacts/reliability/summary.json.

SOAK_S ?= 600
SOAK_CONCURRENCY ?= 32

.PHONY: reliability reliability-report soak

reliability: $(VENV)/.stamp-dev apt-deps
	$(BIN)/python -m pytest tests/reliability

reliability-report: $(VENV)/.stamp-dev
	$(BIN)/python tests/reliability/report.py --write docs/reliability.md

# pytest's per-test timeout (300 s in pyproject.toml) would cut a long soak short.
soak: $(VENV)/.stamp-dev apt-deps
	CNNSERVE_SOAK_S=$(SOAK_S) CNNSERVE_SOAK_CONCURRENCY=$(SOAK_CONCURRENCY) \
	  $(BIN)/python -m pytest tests/reliability/test_soak.py -q -s --timeout=$$(( $(SOAK_S) + 300 ))
	$(BIN)/python tests/reliability/report.py --area load
