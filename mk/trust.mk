# How far to trust a prediction (docs/trust.md): calibration and out-of-distribution scores.
# Included by the Makefile.
#
#   make trust-report       measure the committed Fashion-MNIST models (ONNX Runtime on the
#                           committed files, service.trust for every score): rewrites the
#                           measured part of docs/trust.md, docs/trust.json and the pictures
#                           docs/img/trust-*.png (about 10 minutes on two cores)
#   make calibrate-models   refit their temperatures and OOD statistics, every version
#                           (cnnserve calibrate; rewrites models/*-fashion/*/ood.npz and
#                           model.json "versions")

TRUST_MODELS := lenet5-fashion vggnet-fashion resnet-fashion

.PHONY: trust-report calibrate-models

trust-report: $(VENV)/.stamp-dev
	@scripts/apt-install.sh dataset-fashion-mnist
	$(BIN)/python -m model_export.trust_report --model-dir models --markdown docs/trust.md \
	  --json docs/trust.json --images docs/img

calibrate-models: $(VENV)/.stamp-dev
	@scripts/apt-install.sh dataset-fashion-mnist
	for name in $(TRUST_MODELS); do for dir in models/$$name/[0-9]*/; do \
	  $(BIN)/cnnserve calibrate $$name --version $$(basename $$dir) --dataset fashion-mnist \
	    --model-dir models || exit 1; done; done
