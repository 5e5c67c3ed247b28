# syntax=docker/dockerfile:1
# Production image of aitronos-cache-proxy. The first stage builds wheels (it may compile); the
# final stage only installs them into a slim Python, with no compilers, and runs unprivileged.
# Configuration is by PROXY_* environment variables (see README, "Configuration").

FROM python:3.11 AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --wheel-dir /wheels ".[redis]"

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8080
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index /wheels/*.whl \
    && groupadd --system --gid 10001 proxy \
    && useradd --system --uid 10001 --gid proxy --no-create-home --shell /usr/sbin/nologin proxy
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROXY_PORT', '8080'), timeout=2)"]
ENTRYPOINT ["python", "-m", "proxy"]
