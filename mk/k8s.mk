# Kubernetes and KServe manifests under deploy/ (docs/scaling.md). No cluster runs here:
# `kubectl kustomize` renders them and tests/deploy validates what it prints.
#
#   make k8s-check      render every overlay and example, validate strictly, check invariants
#   make k8s-render     print what `kubectl apply -k` would send, one overlay after the other
#
# Debian's kubernetes-client (kubectl 1.20 with kustomize 2.0.3) where no kubectl is on
# PATH; a newer kubectl already installed is kept, since installing the package would
# replace it. The manifests render the same with both.
ifeq ($(shell command -v kubectl 2>/dev/null),)
APT_PACKAGES += kubernetes-client
endif

K8S_DIRS := deploy/kubernetes/overlays/cpu deploy/kubernetes/overlays/gpu

.PHONY: k8s-check k8s-render

# Render every overlay and example, validate strictly, check the invariants.
k8s-check: $(VENV)/.stamp-dev apt-deps
	$(BIN)/python -m pytest tests/deploy -q

# Print what `kubectl apply -k` would send, one overlay after the other.
k8s-render: apt-deps
	@for dir in $(K8S_DIRS); do echo "# --- $$dir"; kubectl kustomize $$dir || exit 1; done
