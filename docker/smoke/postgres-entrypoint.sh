#!/bin/sh
# The part of docker-library/postgres's docker-entrypoint.sh that docker/compose.yaml relies
# on, for the stand-in image of smoke/postgres.Dockerfile:
#
#   docker-entrypoint.sh postgres [ARG...]
#
# on an empty PGDATA creates the cluster with superuser POSTGRES_USER / POSTGRES_PASSWORD,
# trust on the local socket (the health check's psql) and scram-sha-256 over TCP from
# anywhere, creates POSTGRES_DB, runs /docker-entrypoint-initdb.d/*.sh against a server that
# listens on the socket only, then execs postgres listening on every address. Any other
# command is exec'ed as it is. POSTGRES_INITDB_DIR names another folder of scripts (the
# tests run this file outside a container).
set -eu

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
    export POSTGRES_USER POSTGRES_DB
    # The password reaches initdb through a file only this user can read, never argv.
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA"
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    # Socket only, where psql looks (PGHOST, else Debian's default).
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k ${PGHOST:-/var/run/postgresql}" -w start
    if [ "$POSTGRES_DB" != postgres ]; then
        psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for script in "${POSTGRES_INITDB_DIR:-/docker-entrypoint-initdb.d}"/*.sh; do
        [ -e "$script" ] || continue
        echo "docker-entrypoint.sh: running $script"
        sh "$script"
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "docker-entrypoint.sh: cluster ready"
fi
exec "$@"
