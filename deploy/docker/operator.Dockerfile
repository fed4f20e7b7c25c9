# syntax=docker/dockerfile:1
# The operator (hevlayer-operator): reconciles Pipeline resources. From the repository root:
#   docker build -f deploy/docker/operator.Dockerfile -t hevlayer/operator:0.1.0 .
# Runs with its pod's service account (or OPERATOR_KUBECONFIG) and needs OPERATOR_GATEWAY_ADDRESS
# (docs/operator.md). It serves no gRPC: its health is kopf's liveness endpoint, GET /healthz on
# OPERATOR_HEALTH_ADDRESS. Writes nothing to its root filesystem.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# Builder: the operator's environment from uv.lock, only hevlayer-operator and what it depends on.
FROM ${PYTHON_IMAGE} AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PROJECT_ENVIRONMENT=/opt/hevlayer \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    UV_NO_PROGRESS=1
WORKDIR /src
COPY pyproject.toml uv.lock ./
COPY libs ./libs
COPY services ./services
COPY tools ./tools
RUN uv sync --package hevlayer-operator --frozen --no-dev --no-editable --python /usr/local/bin/python3.11

# Runtime: the same Python image, the environment, a non-root user; no uv, no compilers.
FROM ${PYTHON_IMAGE}
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hevlayer-operator" \
      org.opencontainers.image.description="The operator: reconciles Pipeline custom resources." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/hevlayer/hevlayer" \
      org.opencontainers.image.url="https://github.com/hevlayer/hevlayer/blob/main/docs/containers.md" \
      org.opencontainers.image.vendor="hevlayer"
RUN groupadd --system --gid 10001 hevlayer \
    && useradd --system --uid 10001 --gid hevlayer --home-dir /var/lib/hevlayer --create-home \
       --shell /usr/sbin/nologin hevlayer
COPY --from=builder /opt/hevlayer /opt/hevlayer
COPY deploy/docker/healthcheck.py /usr/local/bin/hevlayer-healthcheck
ENV PATH=/opt/hevlayer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/hevlayer \
    OPERATOR_HEALTH_ADDRESS=0.0.0.0:9105
WORKDIR /var/lib/hevlayer
USER 10001:10001
# kopf's liveness endpoint (GET /healthz).
EXPOSE 9105
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/hevlayer/bin/python", "/usr/local/bin/hevlayer-healthcheck", "--http-env", "OPERATOR_HEALTH_ADDRESS", "--path", "/healthz"]
ENTRYPOINT ["hevlayer-operator"]
