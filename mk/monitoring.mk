# The dashboard and alert rules (docs/observability.md). Included by the Makefile.
#
#   make monitoring-check    promtool checks the rules and runs their unit tests; the
#                            dashboard's and the rules' queries against a live server
#                            (tests/deploy/test_monitoring.py; `make test` runs it too)
#   make prometheus-rule     regenerate deploy/kubernetes/monitoring/prometheusrule.yaml from
#                            deploy/monitoring/prometheus/rules/cnnserve.yml
#   make dashboard-picture   docs/img/dashboard.png: a local Prometheus scrapes a local
#                            cnnserve under DASHBOARD_LOAD_S seconds of load, and each panel's
#                            queries are drawn (scripts/render_dashboard.py)
#   make trace-picture       docs/img/trace.png: one traced classify request, drawn from the
#                            spans a local cnnserve exports (scripts/render_trace.py)

# promtool for the tests, and the Prometheus server for the picture: Debian's prometheus
# (19 MB to download, 96 MB installed, about 20 s once; the service is not started).
APT_PACKAGES += prometheus

DASHBOARD_LOAD_S ?= 90
DASHBOARD_ARGS ?=

.PHONY: monitoring-check prometheus-rule dashboard-picture trace-picture

monitoring-check: $(VENV)/.stamp-dev apt-deps
	$(BIN)/python -m pytest tests/deploy/test_monitoring.py -q

prometheus-rule: $(VENV)/.stamp-dev
	$(BIN)/python tests/deploy/monitoring_support.py

dashboard-picture: $(VENV)/.stamp-dev apt-deps
	$(BIN)/python scripts/render_dashboard.py --load-seconds $(DASHBOARD_LOAD_S) \
	  --out docs/img/dashboard.png $(DASHBOARD_ARGS)

trace-picture: $(VENV)/.stamp-dev
	@scripts/apt-install.sh dataset-fashion-mnist
	$(BIN)/python scripts/render_trace.py --out docs/img/trace.png
