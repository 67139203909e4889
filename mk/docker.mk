# Docker targets (docs/docker.md). Included by the Makefile.
#
#   make docker-smoke   CI's check: a private dockerd, build, lint, run and check the cpu image
#   make docker-lint    hadolint and `docker-compose config` of every profile (no engine)
#   make docker-build   build the cpu and gpu images with the engine you have (DOCKER_HOST)

# Installed by docker-smoke only, not for every `make test`.
DOCKER_APT_PACKAGES := docker.io debootstrap
DOCKER ?= docker

.PHONY: docker-smoke docker-lint docker-build docker-build-cpu docker-build-gpu

docker-smoke: $(VENV)/.stamp-dev
	@scripts/apt-install.sh $(DOCKER_APT_PACKAGES)
	BIN=$(BIN) bash docker/smoke.sh

docker-lint: $(VENV)/.stamp-dev
	$(BIN)/hadolint --failure-threshold error Dockerfile
	$(BIN)/docker-compose config --quiet
	$(BIN)/docker-compose --profile gpu config --quiet
	$(BIN)/docker-compose --profile monitoring config --quiet

# BuildKit builds only the stages a target needs. The classic builder walks every stage above
# the target: for cpu that is the cpu stages alone (they come first), for gpu the cpu ones too.
docker-build: docker-build-cpu docker-build-gpu

docker-build-cpu:
	DOCKER_BUILDKIT=1 $(DOCKER) build --target cpu -t cnnserve:cpu .

docker-build-gpu:
	DOCKER_BUILDKIT=1 $(DOCKER) build --target gpu -t cnnserve:gpu .
