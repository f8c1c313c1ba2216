# syntax=docker/dockerfile:1.7
#
# aiprod images, one Dockerfile, four stages:
#   wheel       builds the aiprod wheel once (no dependencies)
#   api         python slim + the `server` extra only: never installs torch
#   worker      NVIDIA CUDA runtime + torch + the engine extra, for GPU worker machines
#   worker-cpu  python slim + torch's CPU build + the engine extra (the built-in model on CPU)
#
#   docker build --target api        -t aiprod-api .
#   docker build --target worker     -t aiprod-worker .
#   docker build --target worker-cpu -t aiprod-worker-cpu .
#
# Every stage installs with requirements/serve.lock as constraints: the versions `make serve`
# installs, torch's included (chosen in requirements/torch.in, nowhere else).
#
# Both images run deploy/docker-entrypoint.sh: it applies database migrations (api role),
# then execs `aiprod serve --no-worker` (api) or `aiprod worker` (worker).

ARG PYTHON_VERSION=3.11
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS wheel
WORKDIR /src
RUN pip install --no-cache-dir build
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m build --wheel --outdir /wheels .

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS api
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    AIPROD_DATA_DIR=/data \
    AIPROD_ROLE=api
# postgresql-client: pg_dump / pg_restore for `aiprod db backup|restore` against PostgreSQL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 aiprod \
    && mkdir -p /data && chown aiprod:aiprod /data
COPY --from=wheel /wheels /wheels
COPY requirements/serve.lock /tmp/serve.lock
# The server extra (+ boto3 for S3 storage), no [engine] extra: the API never imports torch.
RUN whl="$(ls /wheels/*.whl)" && pip install -c /tmp/serve.lock "${whl}[server,s3]" \
    && rm -rf /wheels /tmp/serve.lock
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER aiprod
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4); sys.exit(0)"
ENTRYPOINT ["tini", "--", "docker-entrypoint.sh"]
CMD ["api"]

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS worker
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    AIPROD_DATA_DIR=/data \
    AIPROD_ROLE=worker
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3-pip tini \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && useradd --create-home --uid 10001 aiprod \
    && mkdir -p /data /models && chown aiprod:aiprod /data /models
ENV PATH=/opt/venv/bin:$PATH
# torch first and on its own (the Linux wheels bundle the CUDA libraries), so nothing else
# resolves a different build (the engine extra brings nvidia-ml-py for the GPU stats).
COPY requirements/serve.lock /tmp/serve.lock
RUN pip install --upgrade pip && pip install -c /tmp/serve.lock torch
COPY --from=wheel /wheels /wheels
RUN whl="$(ls /wheels/*.whl)" && pip install -c /tmp/serve.lock "${whl}[engine,s3]" \
    && rm -rf /wheels /tmp/serve.lock
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER aiprod
WORKDIR /data
VOLUME ["/data", "/models"]
ENTRYPOINT ["tini", "--", "docker-entrypoint.sh"]
CMD ["worker"]

# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS worker-cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    AIPROD_DATA_DIR=/data \
    AIPROD_ROLE=worker
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 aiprod \
    && mkdir -p /data /models && chown aiprod:aiprod /data /models
# torch's CPU build (no CUDA libraries: about 1 GB smaller), at the lock's version
COPY requirements/serve.lock /tmp/serve.lock
RUN pip install -c /tmp/serve.lock torch \
        --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
COPY --from=wheel /wheels /wheels
RUN whl="$(ls /wheels/*.whl)" && pip install -c /tmp/serve.lock "${whl}[engine,s3]" \
    && rm -rf /wheels /tmp/serve.lock
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER aiprod
WORKDIR /data
VOLUME ["/data", "/models"]
ENTRYPOINT ["tini", "--", "docker-entrypoint.sh"]
CMD ["worker"]
