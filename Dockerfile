# cnnserve images, two targets:
#   cpu  python:3.11-slim + onnxruntime. The default.
#   gpu  NVIDIA CUDA 13 runtime with cuDNN + onnxruntime-gpu; CUDA when a GPU is visible
#        (`docker run --gpus all`), the CPU provider otherwise.
#
#   docker build --target cpu -t cnnserve:cpu .     any builder; never needs the CUDA image
#   docker build -t cnnserve:cpu .                  the same image, with BuildKit (see below)
#   docker build --target gpu -t cnnserve:gpu .
#
# The stages are in this order on purpose: the cpu stages first, then the gpu ones, then an
# empty last stage `FROM cpu` that makes cpu the default. BuildKit (the default since Docker 23;
# `DOCKER_BUILDKIT=1` on Docker 20.10) builds only the stages a target needs. The classic
# builder (DOCKER_BUILDKIT=0, and what Compose and other CLIs without buildx fall back to)
# builds every stage down to its target, in file order. With --target cpu, which
# docker-compose.yml names, that is the cpu stages alone: nothing above the cpu target may use
# the CUDA base image. Without a target it is every stage, gpu included: a plain
# `docker build .` needs BuildKit (or the CUDA image), --target cpu never does.
# tests/docker/test_dockerfile_stages.py checks the order, `make docker-smoke` the builds.
# Nothing here needs more than the classic Dockerfile syntax (no `# syntax=` line, no RUN
# --mount).
#
# Each target: the dependencies go into a venv at /opt/venv in a build stage, which the runtime
# stage copies; no compiler, no torch, no pip cache in the runtime image. The default model
# repository is baked in at /app/models; mount another one and point CNNSERVE_MODEL_DIR at it.

ARG PYTHON_IMAGE=python:3.11-slim
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# cpu (first: the classic builder walks every stage above its target)
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
# How pip reaches the package index, when not directly (a mirror or proxy). Passed by the
# caller, never committed; they stay in this build stage, not in the runtime image.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md docker/requirements.py ./
RUN python3 -m venv /opt/venv \
    && python3 requirements.py pyproject.toml serve,cpu >requirements.txt \
    && /opt/venv/bin/pip install -r requirements.txt
COPY service ./service
COPY model_export ./model_export
COPY cnn_client ./cnn_client
RUN /opt/venv/bin/pip install --no-deps . && rm -rf build ./*.egg-info

FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --gid 10001 cnnserve \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cnnserve
COPY --from=cpu-build /opt/venv /opt/venv
COPY models /app/models
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CNNSERVE_HOST=0.0.0.0 \
    CNNSERVE_PORT=8000 \
    CNNSERVE_MODEL_DIR=/app/models \
    CNNSERVE_PROVIDERS=cpu
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('CNNSERVE_PORT', '8000'), timeout=4)"]
# uvicorn takes SIGTERM as "drain": the readiness probe fails at once, requests in flight
# finish, then the process exits 0. Give it longer than CNNSERVE_DRAIN_TIMEOUT_S to do so
# (`docker stop -t`, compose's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["cnnserve"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
# gpu
# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-base
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu's python3 (3.12 on 24.04); the CUDA and cuDNN libraries come with the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 cnnserve \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cnnserve

FROM gpu-base AS gpu-build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
# See cpu-build.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md docker/requirements.py ./
RUN python3 -m venv /opt/venv \
    && python3 requirements.py pyproject.toml serve,gpu >requirements.txt \
    && /opt/venv/bin/pip install -r requirements.txt
COPY service ./service
COPY model_export ./model_export
COPY cnn_client ./cnn_client
RUN /opt/venv/bin/pip install --no-deps . && rm -rf build ./*.egg-info

FROM gpu-base AS gpu
COPY --from=gpu-build /opt/venv /opt/venv
COPY models /app/models
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CNNSERVE_HOST=0.0.0.0 \
    CNNSERVE_PORT=8000 \
    CNNSERVE_MODEL_DIR=/app/models \
    CNNSERVE_PROVIDERS=auto
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('CNNSERVE_PORT', '8000'), timeout=4)"]
# See the cpu stage: SIGTERM drains, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["cnnserve"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------
# The default target (no --target): the cpu image as it is. Last, so BuildKit picks it and
# builds the cpu stages alone; the classic builder walks the gpu stages too (see the top).
# ---------------------------------------------------------------------------------------------
FROM cpu
