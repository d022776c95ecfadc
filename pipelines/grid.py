"""The grid flow: several models through the pipeline as child runs, then a summary.

    python -m pipelines.grid --grid paper-cifar10 --models plain20 resnet20 plain32 resnet32

A parent MLflow run (``grid <name>``, tag ``grid=<name>``) holds the grid; each model is a
:func:`~pipelines.pipeline.resnet_pipeline` subflow whose training run is nested under it
(``RESNET_RUN_TAGS`` carries ``mlflow.parentRunId``). The summary is the report of
``resnet_mlops.report`` where that module exists, otherwise a table of the children's results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.pipeline import add_run_arguments, resnet_pipeline, run_arguments
from pipelines.summary import artifact_key, champion_line
from pipelines.workspace import flow_workspace, run_overrides, validate_params
from resnet_mlops.mlflow_store import short_http_limits, tracking_uri
from resnet_mlops.tracking.runs import experiment_id

# The paper's CIFAR-10 comparison (Fig. 6, Table 6): plain against residual at equal depth.
PAPER_CIFAR_MODELS = [
    "plain20",
    "resnet20",
    "plain32",
    "resnet32",
    "plain44",
    "resnet44",
    "plain56",
    "resnet56",
]


@task(name="open-grid-run", task_run_name="open-grid-run", cache_policy=NO_CACHE)
def open_grid_run(uri: str, experiment: str, grid: str) -> str:
    """The grid's parent MLflow run; returns its id."""
    client = MlflowClient(uri)
    with short_http_limits():
        run = client.create_run(
            experiment_id(client, experiment, uri),
            run_name=f"grid {grid}",
            tags={"grid": grid},
        )
    return run.info.run_id


def _fallback_markdown(grid: str, results: list[dict[str, Any]]) -> str:
    """The children's results as a markdown table: state, errors, MLflow run, registry."""
    lines = [
        f"## Grid {grid}: child runs",
        "",
        "| model | state | test top-1 error (%) | val error (%) | MLflow run | registry |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        metrics = result.get("metrics", {})
        test = metrics.get("evaluate", {}).get("test_top1_error", "")
        val = metrics.get("train", {}).get("val_error", "")
        link = result.get("run_link") or result.get("run_id") or ""
        decision = champion_line(metrics.get("register", {})) if metrics else ""
        lines.append(
            f"| {result['model']} | {result['state']} | {test} | {val} | {link} | {decision} |"
        )
    return "\n".join(lines)


@task(name="grid-summary", task_run_name="grid-summary", cache_policy=NO_CACHE)
def summarise(
    grid: str,
    experiment: str,
    uri: str,
    parent_run: str,
    results: list[dict[str, Any]],
    out_dir: Path,
    data_dir: Path,
    response_images: int,
) -> str:
    """The grid's report (``resnet_mlops.report`` when present) as Prefect artifacts."""
    logger = get_run_logger()
    try:
        from resnet_mlops.report import ReportError, build_report, log_report
    except ImportError:
        logger.warning("resnet_mlops.report is not available: publishing the results table only")
        markdown = _fallback_markdown(grid, results)
    else:
        try:
            report = build_report(
                uri,
                out_dir,
                experiment=experiment,
                grid=grid,
                data_dir=data_dir if data_dir.is_dir() else None,
                response_images=response_images,
            )
        except ReportError as error:  # e.g. no child finished: the table still says why
            logger.warning("no report: %s", error)
            markdown = _fallback_markdown(grid, results)
        else:
            log_report(report, uri, parent_run)
            markdown = f"{report.markdown}\n\n{_fallback_markdown(grid, results)}"
            logger.info("report: %s", report.html)
    create_markdown_artifact(
        markdown=markdown, key=artifact_key("grid", grid), description=f"Grid {grid}: report"
    )
    create_table_artifact(
        table=[
            {
                "model": r["model"],
                "state": r["state"],
                "test_top1_error": r.get("metrics", {}).get("evaluate", {}).get("test_top1_error"),
                "run_id": r.get("run_id"),
            }
            for r in results
        ],
        key=artifact_key("grid", grid, "results"),
        description=f"Grid {grid}: one row per model",
    )
    return markdown


@flow(name="resnet-grid")
def resnet_grid(
    models: list[str] | None = None,
    grid: str = "paper-cifar10",
    dataset: str | None = None,
    overrides: list[str] | None = None,
    nproc_per_node: int = 1,
    retries: int = 2,
    retry_delay_seconds: float = 30.0,
    save_experiment: bool = True,
    workspace: str | None = None,
    persist_overrides: bool = False,
) -> list[dict[str, Any]]:
    """Run the pipeline once per model, as child flow runs of one grid, then summarise.

    Args:
        models: The ``train.model`` of each child; default: the paper's plain and residual
            nets of depth 20, 32, 44 and 56.
        grid: The grid's name (the MLflow parent run ``grid <name>`` and tag ``grid``).
        dataset, overrides, nproc_per_node, retries, retry_delay_seconds, save_experiment,
            workspace, persist_overrides: As for ``resnet-pipeline``, the same for every
            child (``workspace`` within the same allowed folders).

    Returns:
        One entry per model: its state and, when it finished, its outcome.
    """
    # First of all: the API's caller chose this path (each child checks it again).
    root = flow_workspace(workspace)
    logger = get_run_logger()
    models = models or PAPER_CIFAR_MODELS
    # Every child's params are checked before the first one starts.
    trees = {
        m: validate_params(root / "params.yaml", run_overrides(dataset, m, overrides))
        for m in models
    }
    tree = trees[models[0]]
    experiment, uri = tree["train"]["experiment"], tracking_uri(root)
    parent = open_grid_run.with_options(retries=retries, retry_delay_seconds=retry_delay_seconds)(
        uri, experiment, grid
    )
    logger.info("grid %s: parent MLflow run %s in %s", grid, parent, experiment)
    results: list[dict[str, Any]] = []
    for model in models:
        state = resnet_pipeline.with_options(flow_run_name=f"{grid}-{model}")(
            dataset=dataset,
            model=model,
            overrides=overrides,
            nproc_per_node=nproc_per_node,
            run_tags={"mlflow.parentRunId": parent, "grid": grid},
            retries=retries,
            retry_delay_seconds=retry_delay_seconds,
            save_experiment=save_experiment,
            workspace=str(root),
            persist_overrides=persist_overrides,
            return_state=True,
        )
        outcome = state.result(raise_on_failure=False) if state.is_completed() else {}
        results.append({"model": model, "state": state.name, **(outcome or {})})
    failed = [r["model"] for r in results if r["state"] != "Completed"]
    summarise(
        grid,
        experiment,
        uri,
        parent,
        results,
        root / "reports" / f"grid-{grid}",
        root / "data" / "preprocessed" / tree["dataset"],
        tree.get("report", {}).get("response_images", 1000),
    )
    with short_http_limits():
        MlflowClient(uri).set_terminated(parent, "FAILED" if failed else "FINISHED")
    if failed:
        raise RuntimeError(f"grid {grid}: failed: {', '.join(failed)}")
    return results


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.grid``: run the grid here, no Prefect server needed."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.grid", description=__doc__)
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--grid", default="paper-cifar10")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    state = resnet_grid(
        models=args.models, grid=args.grid, **run_arguments(args), return_state=True
    )
    if not state.is_completed():
        sys.exit(f"resnet-grid: {state.message}")


if __name__ == "__main__":
    main()
