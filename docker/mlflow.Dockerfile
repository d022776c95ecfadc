# syntax=docker/dockerfile:1
# The MLflow tracking server of docker/compose.yaml: MLflow with the PostgreSQL driver and
# boto3 for the S3 (MinIO) artifact store it proxies. Same MLflow release as the project's.
# In a virtual environment: a Debian python (docker/smoke.sh builds on one, PYTHON_IMAGE) has
# no pip of its own and refuses system-wide installs (PEP 668). PIP_NO_INDEX and
# PIP_FIND_LINKS are pip's own settings, unset by default (a wheelhouse instead of PyPI).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv \
    && pip install mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.44.8 \
    && useradd --create-home --uid 1000 mlflow
# The user mlflow, by uid.
USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
