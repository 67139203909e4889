# Explanation quality (docs/explain.md). Included by the Makefile.
#
#   make explain-report   deletion AUC against random orders, the model randomisation check
#                         and the two-object canvas, measured with the service's own methods on
#                         the committed models; writes docs/explain.md's tables and
#                         docs/img/explain/*.png (~15 minutes on 2 cores).
#                         EXPLAIN_ARGS passes options through (e.g. "--quick": a smoke run,
#                         writing the same files).

EXPLAIN_ARGS ?=

.PHONY: explain-report

explain-report: $(VENV)/.stamp-dev apt-deps
	$(BIN)/python -m model_export.explain_report $(EXPLAIN_ARGS)
