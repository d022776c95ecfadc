# syntax=docker/dockerfile:1
# A stand-in for MinIO in docker/compose.smoke.yaml: moto's S3 server (PyPI's moto[server]),
# which speaks the S3 API MLflow and DVC use, on port 9000. It keeps its buckets in memory and
# accepts any credentials; its boto3 also creates the buckets (the minio-init job's part).
# Build from docker/:
#
#   docker build -f smoke/moto.Dockerfile --build-arg PYTHON_IMAGE=<debian image> smoke
#
# PIP_NO_INDEX and PIP_FIND_LINKS are pip's own settings (a wheelhouse instead of PyPI).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && pip install "moto[server]==5.2.5" \
    && useradd --create-home --uid 1000 moto
USER 1000:1000
WORKDIR /home/moto
EXPOSE 9000
CMD ["moto_server", "--host", "0.0.0.0", "--port", "9000"]
