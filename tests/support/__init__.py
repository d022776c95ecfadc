"""Helpers the tests of every tier share: the project's paths, small real data sets, a real
MLflow server, a small disk, the import closure of the stages. Fixtures are in
``tests/conftest.py``."""
