# syntax=docker/dockerfile:1
# streamrec-embedder images. Three stages:
#   build  - a virtualenv with the package and its serving extra only (no torch), built from the source
#   train  - the offline training job (torch CPU, `.[train]`):   docker build --target train -t streamrec-train .
#   serve  - the default target: the venv from `build`, the default bundle, a non-root user, a gRPC health
#            check:                                             docker build -t streamrec-embedder .
# tests/unit/test_deploy_files.py checks this file statically (there is no Docker engine where CI runs).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY embedder/ embedder/
COPY training/ training/
COPY benchmarks/ benchmarks/
# A regular (not editable) install of the serving extra: the venv is all the serve stage needs.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install '.[serve]' \
    && /opt/venv/bin/streamrec-embedder --help > /dev/null

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS train
# torch is pinned in pyproject.toml. Pass the URL of PyTorch's CPU-only wheel index as TORCH_INDEX_URL to keep
# the several GB of CUDA wheels that the default index resolves torch to out of the image.
ARG TORCH_INDEX_URL=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 streamrec \
    && useradd --system --uid 10001 --gid streamrec --home-dir /app --no-create-home streamrec
WORKDIR /app
COPY pyproject.toml README.md Makefile ./
COPY embedder/ embedder/
COPY training/ training/
COPY benchmarks/ benchmarks/
COPY protos/ protos/
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi \
    && pip install -e '.[train]' \
    && mkdir -p /app/.cache /app/models \
    && chown streamrec:streamrec /app/.cache /app/models
USER 10001:10001
# Caches (corpus, teacher targets, checkpoints) and the finished bundle go to volumes: see the `train`
# profile in docker-compose.yml.
VOLUME ["/app/.cache", "/app/models"]
ENTRYPOINT ["python", "-m", "training.train"]
CMD ["--config", "training/configs/cnn5m-v2.toml"]

# ---------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS serve
RUN groupadd --system --gid 10001 streamrec \
    && useradd --system --uid 10001 --gid streamrec --home-dir /app --no-create-home streamrec
COPY --from=build /opt/venv /opt/venv
# The default bundle, verified (format_version, sha256) by the server at start.
COPY models/streamrec-cnn-v2/ /app/models/streamrec-cnn-v2/
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMREC_EMBEDDER_BUNDLE=/app/models/streamrec-cnn-v2 \
    STREAMREC_EMBEDDER_HOST=[::] \
    STREAMREC_EMBEDDER_PORT=50051 \
    STREAMREC_EMBEDDER_METRICS_PORT=9000 \
    STREAMREC_EMBEDDER_METRICS_HOST=0.0.0.0
USER 10001:10001
# /metrics is plaintext and unauthenticated: the image binds it on every interface so Prometheus can
# scrape it over the container network. Do not publish 9000 to the outside (compose uses `expose`, not
# `ports`); on Kubernetes deploy/k8s/networkpolicy.yaml lets only the monitoring namespace reach it.
EXPOSE 50051 9000
# Healthy = grpc.health.v1 answers SERVING (it turns NOT_SERVING while draining and when inference can
# no longer be trusted). Shell form, so a port changed through the env var is the one probed.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD streamrec-embedder health --address "127.0.0.1:${STREAMREC_EMBEDDER_PORT:-50051}" --timeout-s 3
# SIGTERM drains: NOT_SERVING, accepted calls finish within grace_period_s (10 s), exit 0. Give the
# container more than that before SIGKILL (`docker stop -t 15`, compose `stop_grace_period`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["streamrec-embedder"]
CMD ["serve"]
