# syntax=docker/dockerfile:1
# The extract worker (hevlayer-extractor): claims ids from a pipeline's extract stage through the
# gateway, reads each object from its source (a path, S3, HTTP), runs the producer of its kind and
# stages the chunks. From the repository root:
#   docker build -f deploy/docker/extractor.Dockerfile -t hevlayer/extractor:0.1.0 .
# Needs HEVLAYER_GATEWAY_ADDRESS and an API token (docs/configuration.md). Writable path: /tmp.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# Builder: the extract worker's environment from uv.lock, only hevlayer-extractor and what it depends on.
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
RUN uv sync --package hevlayer-extractor --frozen --no-dev --no-editable --python /usr/local/bin/python3.11

# Runtime: the same Python image, the environment, a non-root user; no uv, no compilers.
FROM ${PYTHON_IMAGE}
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hevlayer-extractor" \
      org.opencontainers.image.description="The extract worker: claims ids from a pipeline's extract stage through the gateway, reads each object from its source, runs the producer of its kind and stages the chunks under its lease." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/hevlayer/hevlayer" \
      org.opencontainers.image.url="https://github.com/hevlayer/hevlayer/blob/main/docs/containers.md" \
      org.opencontainers.image.vendor="hevlayer"
# tesseract: the offline image describer (OCR) of the image producer (Debian bookworm's version).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tesseract-ocr=5.3.0-2 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 hevlayer \
    && useradd --system --uid 10001 --gid hevlayer --home-dir /var/lib/hevlayer --create-home \
       --shell /usr/sbin/nologin hevlayer
COPY --from=builder /opt/hevlayer /opt/hevlayer
COPY deploy/docker/healthcheck.py /usr/local/bin/hevlayer-healthcheck
ENV PATH=/opt/hevlayer/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/hevlayer \
    HEVLAYER_GRPC_ADDRESS=0.0.0.0:50055 \
    HEVLAYER_HTTP_ADDRESS=0.0.0.0:9105
WORKDIR /var/lib/hevlayer
USER 10001:10001
# gRPC (health, reflection), HTTP (/metrics, /healthz, /readyz).
EXPOSE 50055 9105
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/hevlayer/bin/python", "/usr/local/bin/hevlayer-healthcheck"]
ENTRYPOINT ["hevlayer-extractor"]
