# syntax=docker/dockerfile:1
#
# One image for every normsearch process of docker-compose.yml: the API (`normsearch serve`), the
# Celery worker (`normsearch worker`), the migrations (`normsearch db upgrade`) and the Ray nodes
# (`ray start ...`). The Ray nodes need the same code as the worker: trials import worker/ and
# sn_core/.
#
#   docker build -t normsearch .                                   # CUDA build of torch
#   docker build -t normsearch --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# No secrets are used at build time: the database password and the other settings come from the
# environment of the running container (see .env.example).

ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

# Where torch comes from. The default is the CUDA 12.8 wheel index (wheels bundle the CUDA
# runtime; the host needs only the NVIDIA driver and the NVIDIA container toolkit). Use
# .../whl/cpu for a CPU-only image, or another CUDA index matching the GPU nodes' driver.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# RAY_USAGE_STATS_ENABLED: no usage reporting from a cluster that may have no internet access.
# MPLCONFIGDIR: matplotlib (reports) needs a writable config directory for the non-root user.
# NVIDIA_DRIVER_CAPABILITIES: the NVIDIA container toolkit exposes CUDA and NVML (GPU nodes).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app

# 1. torch first, exactly as pinned in pyproject.toml, from the chosen index (so no other
#    requirement can pull a different build).
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==2.13.0"

# 2. The other dependencies, read from pyproject.toml: a layer that only changes with it.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 3. The code. alembic.ini and migrations/ sit beside the packages: service/db/migrate.py finds
#    the migrations at <package root>/migrations, so the project is installed in place (-e) from
#    /app rather than copied into site-packages, where that directory would not exist.
COPY alembic.ini ./
COPY migrations/ migrations/
COPY sn_core/ sn_core/
COPY service/ service/
COPY worker/ worker/
COPY api/ api/
COPY cli/ cli/
COPY examples/ examples/
RUN pip install --no-deps -e . \
    && normsearch --help > /dev/null

# A non-root user owns the state directories; the code stays read-only to it. The compose file
# mounts named volumes at these paths (a new named volume takes this ownership).
RUN useradd --create-home --uid 1000 --user-group normsearch \
    && mkdir -p /var/lib/normsearch/runs /data \
    && chown -R normsearch:normsearch /var/lib/normsearch
USER normsearch

ENV NORMSEARCH_RUNS_DIR=/var/lib/normsearch/runs \
    NORMSEARCH_DATA_ROOTS=/data

EXPOSE 8000

# No HEALTHCHECK here: the same image runs the API, the worker and Ray nodes, which need
# different checks; docker-compose.yml defines one per service.
CMD ["normsearch", "serve", "--host", "0.0.0.0", "--port", "8000"]
