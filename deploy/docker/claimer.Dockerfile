# syntax=docker/dockerfile:1
# The claimer (hevlayer-claimer): sole owner of PostgreSQL. From the repository root:
#   docker build -f deploy/docker/claimer.Dockerfile -t hevlayer/claimer:0.1.0 .
# Needs DATABASE_URL and CLAIMER_INTERNAL_TOKEN (docs/configuration.md). Writes nothing to
# its root filesystem: it runs with a read-only one.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# Builder: the claimer's environment from uv.lock, only hevlayer-claimer and what it depends on.
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
RUN uv sync --package hevlayer-claimer --frozen --no-dev --no-editable --python /usr/local/bin/python3.11

# Runtime: the same Python image, the environment, a non-root user; no uv, no compilers.
FROM ${PYTHON_IMAGE}
ARG REVISION=unknown
LABEL org.opencontainers.image.title="hevlayer-claimer" \
      org.opencontainers.image.description="The claimer: sole owner of PostgreSQL (pipelines, documents, leases, segments)." \
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
    HEVLAYER_GRPC_ADDRESS=0.0.0.0:50052 \
    HEVLAYER_HTTP_ADDRESS=0.0.0.0:9102
WORKDIR /var/lib/hevlayer
USER 10001:10001
# gRPC (pipelines, leases, documents, tokens; health; reflection), HTTP (/metrics, /healthz, /readyz).
EXPOSE 50052 9102
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/hevlayer/bin/python", "/usr/local/bin/hevlayer-healthcheck"]
ENTRYPOINT ["hevlayer-claimer"]
