"""The whole pipeline, the Prefect flows, the Docker stack's wiring and services."""
