# The web page served at / (docs/ui.md). Included by the Makefile.
#
#   make test-browser   the page's tests: Debian's Chromium, headless, driven by Playwright
#   make ui-samples     regenerate service/static/samples/ (Fashion-MNIST PNGs, photo JPEGs)

# `make test` runs the browser tests with the rest; apt-deps installs the browser they drive
# (/usr/bin/chromium; Playwright never downloads one).
APT_PACKAGES += chromium

.PHONY: test-browser ui-samples

test-browser: $(VENV)/.stamp-dev apt-deps
	$(BIN)/python -m pytest tests/browser -m browser

ui-samples: $(VENV)/.stamp-dev apt-deps
	$(BIN)/python tests/browser/make_samples.py
