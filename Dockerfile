# The slicerank services (scheduler, ML backend, training worker, provisioning) in one image.
# Label Studio, PostgreSQL and Redis run from their own images (see docker-compose.yml).
#
# Default base: python:3.11-slim from Docker Hub. `make images-offline` builds the same file on
# a Debian bookworm base made with debootstrap (BASE_IMAGE), with pip pointed at a PyPI mirror
# (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST): no other registry is needed.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/slicerank/bin:$PATH

# A plain Debian base has no Python yet (bookworm's is 3.11, as pyproject.toml requires).
RUN if ! python3 -c "import ensurepip" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
           python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/slicerank

ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=

# torch first, in its own layer: it is by far the largest dependency and changes least often.
# The PyPI wheels for linux/x86_64 carry their CUDA runtime; the host needs only the NVIDIA
# driver and the NVIDIA container toolkit. Without a GPU the same image trains on the CPU.
RUN pip install torch==2.14.1 torchvision==0.29.1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY slicerank_base ./slicerank_base
COPY slicerank ./slicerank
COPY cmr_ingest ./cmr_ingest
COPY ls_config ./ls_config
COPY ranking_scheduler ./ranking_scheduler
COPY ml_backend ./ml_backend
COPY analysis ./analysis
COPY benchmarks ./benchmarks
RUN pip install . && slicerank --help >/dev/null

# Run as an unprivileged user; it owns the data folders the volumes mount over.
RUN useradd --create-home --uid 10001 slicerank \
    && mkdir -p /data/models /data/scheduler /data/media \
    && chown -R slicerank:slicerank /data
USER slicerank

ENTRYPOINT ["slicerank"]
CMD ["--help"]
