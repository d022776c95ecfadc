# syntax=docker/dockerfile:1
# A stand-in for the postgres:16-bookworm image of docker/compose.yaml, for docker/smoke.sh
# on a machine that cannot pull images: Debian's own PostgreSQL (15 on bookworm) and an
# entrypoint that does what compose.yaml asks of the upstream one (postgres-entrypoint.sh).
# Differences: PostgreSQL 15, not 16; the server runs as postgres (uid 999, as upstream) from
# the start, where upstream's entrypoint starts as root and drops to it. Build from docker/:
#
#   docker build -f smoke/postgres.Dockerfile --build-arg BASE_IMAGE=<debian image> smoke
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# No cluster from the package's own scripts: the entrypoint creates one in PGDATA, as upstream.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/sh postgres \
    && mkdir -p /etc/postgresql-common \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# A new named volume on PGDATA takes the image's owner (postgres) and mode (700) there.
VOLUME /var/lib/postgresql/data
USER 999:999
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
