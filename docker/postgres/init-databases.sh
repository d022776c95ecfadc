#!/bin/sh
# Run once by the postgres image on an empty volume: MLflow has POSTGRES_DB, Prefect its own.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE prefect OWNER \"$POSTGRES_USER\""
