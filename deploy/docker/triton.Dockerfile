# syntax=docker/dockerfile:1
# Triton Inference Server with the MiniLM model repository of deploy/triton (deploy/triton/README.md):
# the GPU tier behind the embedders. From the repository root:
#   docker build -f deploy/docker/triton.Dockerfile -t hevlayer/triton:0.1.0 .
# and, for clusters that copy the repository into the pod with an init container instead,
#   docker build -f deploy/docker/triton.Dockerfile --target models -t hevlayer/triton-models:0.1.0 .
# The repository is built as deploy/triton/README.md says, by hevlayer-triton-repository from
# hevlayer-triton's locked environment (libs/triton; the model files come from its PyPI packages,
# never from a hub). The serving stage is NVIDIA's image plus the Python packages its Python-backend
# models import, at uv.lock's versions.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.08-py3

FROM ${UV_IMAGE} AS uv

# Builder: hevlayer-triton's environment (hevlayer-triton-repository and the model files).
FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PROJECT_ENVIRONMENT=/opt/hevlayer \
    UV_PYTHON_DOWNLOADS=never \
    UV_NO_CACHE=1 \
    UV_NO_PROGRESS=1
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs ./libs
COPY services ./services
COPY tools ./tools
RUN uv sync --package hevlayer-triton --frozen --no-dev --no-editable --python /usr/local/bin/python3.11
COPY deploy/triton/model_repository ./deploy/triton/model_repository
RUN /opt/hevlayer/bin/hevlayer-triton-repository --source deploy/triton/model_repository --output /models

# `--target models`: the repository alone, for an init container that copies it (cp -R /models/. DEST).
FROM ${PYTHON_IMAGE} AS models
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hevlayer-triton-models" \
      org.opencontainers.image.description="The MiniLM Triton model repository of hevlayer at /models, for an init container to copy." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/hevlayer/hevlayer" \
      org.opencontainers.image.url="https://github.com/hevlayer/hevlayer/blob/main/deploy/triton/README.md" \
      org.opencontainers.image.vendor="hevlayer"
COPY --from=builder /models /models
USER 1000:1000

# The server: NVIDIA's Triton image, the repository at /models, a non-root user.
FROM ${TRITON_IMAGE}
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hevlayer-triton" \
      org.opencontainers.image.description="Triton Inference Server serving all-MiniLM-L6-v2 (the minilm ensemble) to the hevlayer embedders." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/hevlayer/hevlayer" \
      org.opencontainers.image.url="https://github.com/hevlayer/hevlayer/blob/main/deploy/triton/README.md" \
      org.opencontainers.image.vendor="hevlayer"
# The Python-backend models: minilm_tokenizer imports tokenizers, both import NumPy (1.x: the
# backend stub converts tensors with a pybind11 built for NumPy 1).
RUN pip install --no-cache-dir tokenizers==0.23.3 numpy==1.26.4
COPY --from=builder /models /models
COPY deploy/docker/healthcheck.py /usr/local/bin/hevlayer-healthcheck
# triton-server, the unprivileged user of NVIDIA's image.
USER 1000:1000
# HTTP/REST (health, metadata), gRPC (what the embedders call), Prometheus metrics.
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "/usr/local/bin/hevlayer-healthcheck", "--http-address", "127.0.0.1:8000", "--path", "/v2/health/ready"]
CMD ["tritonserver", "--model-repository=/models", "--strict-readiness=true", "--exit-on-error=true"]
