# syntax=docker/dockerfile:1
# kpistream worker image. Build:  docker build -t kpistream:0.1.0 .
# Run:    docker run --rm -p 6066:6066 -e KPISTREAM_KAFKA_BOOTSTRAP=... kpistream:0.1.0 [worker]
# The same image runs every subcommand (worker, generate, top, settings, topics create).

ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm

# --- builder: a wheel of kpistream plus wheels of all its (pinned) dependencies -----------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only here, for any dependency without a prebuilt wheel; never in the runtime.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels .

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KPISTREAM_WEB_HOST=0.0.0.0 \
    KPISTREAM_WEB_PORT=6066 \
    KPISTREAM_DATA_DIR=/var/lib/kpistream
# Fixed uid/gid 10001 so Kubernetes' runAsNonRoot/runAsUser can match it (deploy/k8s).
RUN groupadd --system --gid 10001 kpistream \
 && useradd --system --uid 10001 --gid kpistream --home-dir /var/lib/kpistream \
      --shell /usr/sbin/nologin kpistream \
 && install -d -o kpistream -g kpistream -m 0750 /var/lib/kpistream
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels kpistream
USER kpistream
WORKDIR /var/lib/kpistream
EXPOSE 6066
# Healthy when the worker's web server answers /metrics (only `worker` serves it; compose
# disables this check for the generator).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('KPISTREAM_WEB_PORT', '6066') + '/metrics', timeout=4)"]
ENTRYPOINT ["kpistream"]
CMD ["worker"]
