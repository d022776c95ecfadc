"""Prefect flows that run the DVC pipeline (``dvc.yaml``) stage by stage.

``pipelines/`` orchestrates and never re-implements ML code: every task runs one ``dvc.yaml``
stage through ``dvc repro``, which calls the stage's ``resnet`` command. See docs/prefect.md.
"""
