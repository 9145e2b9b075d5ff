# The slicerank services (scheduler, ML backend, training worker, provisioning) in one image.
# Label Studio itself runs from its official image (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, in its own layer: it is by far the largest dependency and changes least often.
# The PyPI wheels for linux/x86_64 carry their CUDA runtime; the host needs only the NVIDIA
# driver and the NVIDIA container toolkit.
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
RUN pip install . && slicerank --help >/dev/null

# Run as an unprivileged user; it owns the data folders the volumes mount over.
RUN useradd --create-home --uid 10001 slicerank \
    && mkdir -p /data/models /data/scheduler /data/media \
    && chown -R slicerank:slicerank /data
USER slicerank

ENTRYPOINT ["slicerank"]
CMD ["--help"]
