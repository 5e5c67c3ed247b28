# syntax=docker/dockerfile:1
# Production image of aitronos-cache-proxy. The first stage builds wheels (it may compile) from the
# hash-pinned lock file; the final stage only installs them into a slim Python, with no compilers,
# and runs unprivileged. Configuration is by PROXY_* environment variables (see README).
# The base images are build arguments so that CI, which reaches no registry, can build the same
# file on a local Debian base (see README, "Deploying"); nothing else differs.
ARG BUILD_IMAGE=python:3.11
ARG RUNTIME_IMAGE=python:3.11-slim

FROM ${BUILD_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY proxy ./proxy
# Dependencies exactly as locked (versions and hashes: uvloop, which the proxy serves on, and the
# br/zstd codecs for --compress-codings among them), then the project itself without resolving.
RUN pip wheel --wheel-dir /wheels --require-hashes -r requirements.lock \
    && pip wheel --wheel-dir /wheels --no-deps .

FROM ${RUNTIME_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8080
# Debian already has a system user and group "proxy" (uid/gid 13): ours is "cacheproxy".
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index /wheels/*.whl \
    && groupadd --system --gid 10001 cacheproxy \
    && useradd --system --uid 10001 --gid cacheproxy --no-create-home \
       --shell /usr/sbin/nologin cacheproxy
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROXY_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["python", "-m", "proxy"]
