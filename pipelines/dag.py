"""The pipeline's stages as DVC sees them: read from ``dvc.yaml``, never copied here."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
from dvc.repo import Repo


def pipeline_stages(root: Path) -> list[str]:
    """The ``dvc.yaml`` stages of the project at ``root``, each after the stages it depends on.

    DVC's own stage graph decides the order (its edges point from a stage to its
    dependencies), so the flow runs exactly what ``dvc repro`` runs, in an order it allows.
    """
    with Repo(str(root)) as repo:
        graph = repo.index.graph
        stages = [
            stage.name
            for stage in reversed(list(nx.topological_sort(graph)))
            if stage.path_in_repo == "dvc.yaml"
        ]
    return stages


def git_tracked_outputs(root: Path) -> list[str]:
    """Files DVC leaves to git (``cache: false`` outputs, metrics, plots) plus ``dvc.lock``.

    ``dvc exp save`` records only files git tracks unless told to include the others.
    """
    with Repo(str(root)) as repo:
        paths = {
            out.def_path
            for stage in repo.index.stages
            for out in stage.outs
            if not out.use_cache and (root / out.def_path).exists()
        }
    return sorted(paths | {"dvc.lock"})
