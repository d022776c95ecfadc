"""The ``resnet`` command line: thin wrappers over the package's functions."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from resnet_mlops.cli.fail import fail
from resnet_mlops.cli.registry import add_commands
from resnet_mlops.errors import UserError
from resnet_mlops.models import MODELS
from resnet_mlops.models.zoo import describe_zoo


class _Commands(TyperGroup):
    """The command group, the one place every command's user errors are reported, in one
    line on stderr: a :class:`UserError` (``error: <message>``, its exit code) and a refused
    write (disk full, read-only, no permission: ``error: <path>: no space left on device``,
    exit 1).

    Such a write error can come from deep inside a stage (numpy,
    torch.save, an MLflow download); the writers re-raise it naming the output, not their
    temporary file, and have removed that file.
    """

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except UserError as error:
            fail(str(error), error.exit_code)
        except OSError as error:
            from resnet_mlops.io import OUTPUT_ERRNOS, os_error_message  # numpy: lazily

            if error.errno not in OUTPUT_ERRNOS:
                raise
            fail(os_error_message(error), 1)


app = typer.Typer(
    cls=_Commands,
    help="Deep Residual Learning (He et al., 2015): models, data, training and tracking.",
    no_args_is_help=True,
    add_completion=False,
)


def _human(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


@app.command("models")
def models_command(
    names: Annotated[
        list[str] | None, typer.Argument(help="Models to show (default: the whole zoo).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the model zoo: layers, parameters, multiply-adds and the paper's error."""
    unknown = [name for name in names or [] if name not in MODELS]
    if unknown:
        fail(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    entries = describe_zoo(names)
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return
    table = Table(title="Model zoo (multiply-adds for one image at the native input size)")
    for column in ("name", "dataset", "layers", "shortcut", "params", "mult-adds", "input"):
        table.add_column(column, justify="left" if column in ("name", "dataset") else "right")
    table.add_column("paper top-1 err %", justify="right")
    table.add_column("source")
    for e in entries:
        table.add_row(
            e.name,
            e.dataset,
            str(e.layers),
            e.shortcut,
            f"{e.parameters:,}",
            _human(e.multiply_adds),
            f"{e.input_size}x{e.input_size}",
            f"{e.paper_top1_error:.2f}" if e.paper_top1_error else "-",
            e.paper_source or "",
        )
    # Piped output has no terminal width; do not let rich wrap the table at 80 columns.
    Console(width=None if sys.stdout.isatty() else 120).print(table)


ParamsOption = Annotated[Path, typer.Option("--params", help="The params file.")]
ForceOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace --out even if it is a folder this command did not write (never a "
        "file), and --report even if it is a file this command did not write.",
    ),
]
Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="key=value overrides of params.yaml, e.g. dataset=imagenet"),
]


@app.command("check-params")
def check_params_command(
    overrides: Overrides = None,
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[
        Path | None,
        typer.Option(help="Write a fixed marker here when the params are valid (dvc.yaml)."),
    ] = None,
) -> None:
    """Check the whole params file: keys, types, ranges, relations, model and devices.

    dvc.yaml's first stage: every other stage depends on its marker, so DVC checks
    params.yaml before it deletes any stage's outputs.
    """
    from resnet_mlops.stages.params import check_params

    check_params(params, overrides or [], out)
    typer.echo(f"{params}: valid")


@app.command("prepare")
def prepare_command(
    overrides: Overrides = None,
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Default: data/prepared/<dataset>.")] = None,
    report: Annotated[Path, typer.Option(help="The data report (DVC metrics).")] = Path(
        "metrics/prepare.json"
    ),
    download_dir: Annotated[Path, typer.Option(help="Where downloads are kept.")] = Path(
        "data/downloads"
    ),
    force: ForceOption = False,
) -> None:
    """Read the raw source, verify every image and write the verified data and its manifest."""
    from resnet_mlops.stages.prepare import run_prepare

    out, result = run_prepare(params, overrides or [], out, report, download_dir, force=force)
    typer.echo(
        f"prepared {result['dataset']}: {result['images']} images -> {out} (report: {report})"
    )


@app.command("preprocess")
def preprocess_command(
    overrides: Overrides = None,
    params: ParamsOption = Path("params.yaml"),
    prepared: Annotated[Path | None, typer.Option(help="Default: data/prepared/<dataset>.")] = None,
    out: Annotated[Path | None, typer.Option(help="Default: data/preprocessed/<dataset>.")] = None,
    report: Annotated[Path, typer.Option(help="The report (DVC metrics).")] = Path(
        "metrics/preprocess.json"
    ),
    force: ForceOption = False,
) -> None:
    """Turn verified data into the training format: arrays for CIFAR-10, shards for ImageNet."""
    from resnet_mlops.stages.preprocess import run_preprocess

    out, result = run_preprocess(params, overrides or [], prepared, out, report, force=force)
    counts = result.get("splits") or result.get("samples")
    typer.echo(f"preprocessed {result['dataset']}: {counts} -> {out} (report: {report})")


@app.command("train")
def train_command(
    overrides: Overrides = None,
    params: ParamsOption = Path("params.yaml"),
    data: Annotated[Path | None, typer.Option(help="Default: data/preprocessed/<dataset>.")] = None,
    out: Annotated[Path, typer.Option(help="Checkpoint and model folder.")] = Path("models"),
    metrics: Annotated[Path, typer.Option(help="Final metrics, all of them.")] = Path(
        "metrics/train.json"
    ),
    headline: Annotated[
        Path | None,
        typer.Option(
            help="Also write train/val error and images/s here (the DVC metrics that "
            "dvc exp show lists)."
        ),
    ] = None,
    history: Annotated[Path, typer.Option(help="Per-epoch metrics (DVC plots).")] = Path(
        "plots/train_history.json"
    ),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the checkpoint in --out.")
    ] = False,
    auto_resume: Annotated[
        bool,
        typer.Option(
            "--auto-resume",
            help="Continue from the checkpoint in --out if the same params, data and code wrote "
            "it; otherwise start afresh (what dvc repro runs).",
        ),
    ] = False,
    stop_with_parent: Annotated[
        bool,
        typer.Option(
            "--stop-with-parent",
            help="Checkpoint and exit 143 when the process that started this one exits (a "
            "killed dvc repro), as on SIGTERM; shell -c wrappers in between are skipped.",
        ),
    ] = False,
) -> None:
    """Train a model with the paper's recipe (the train section of params.yaml).

    With torchrun's ``PET_NPROC_PER_NODE`` / ``PET_NNODES`` set for more than one process, it
    re-runs itself under ``torch.distributed.run`` (see ``resnet_mlops.train.launch``).
    """
    from resnet_mlops.stages.train import StageOptions, run_training
    from resnet_mlops.train.launch import command_args, launch_requested, relaunch_under_torchrun
    from resnet_mlops.train.loop import Interrupted

    if launch_requested(os.environ):
        options = {
            "--params": params,
            "--out": out,
            "--metrics": metrics,
            "--headline": headline,
            "--history": history,
            "--data": data,
            "--resume": resume,
            "--auto-resume": auto_resume,
            "--stop-with-parent": stop_with_parent,
        }
        relaunch_under_torchrun(command_args("train", options, overrides or []))
    mode = "auto" if auto_resume and not resume else resume
    try:
        result = run_training(
            params,
            overrides or [],
            data,
            out,
            metrics,
            history,
            mode,
            options=StageOptions(stop_with_parent=stop_with_parent, headline=headline),
        )
    except Interrupted as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(143) from None
    typer.echo(f"trained {result.iterations} iterations: {result.metrics}")


@app.command("evaluate")
def evaluate_command(
    overrides: Overrides = None,
    params: ParamsOption = Path("params.yaml"),
    model: Annotated[Path, typer.Option(help="The trained model file.")] = Path("models/model.pt"),
    data: Annotated[Path | None, typer.Option(help="Default: data/preprocessed/<dataset>.")] = None,
    metrics: Annotated[Path, typer.Option(help="Metrics JSON, all of them.")] = Path(
        "metrics/evaluate.json"
    ),
    headline: Annotated[
        Path | None,
        typer.Option(help="Also write the top-1 error here (the DVC metrics dvc exp show lists)."),
    ] = None,
    plots: Annotated[Path, typer.Option(help="Folder for the confusion matrix.")] = Path("plots"),
) -> None:
    """Score a trained model: top-1/top-5 error, per-class accuracy, confusion matrix."""
    from resnet_mlops.stages.evaluate import EvalPaths, run_evaluation

    paths = EvalPaths(metrics, plots / "confusion.csv", plots / "confusion.png", headline)
    result = run_evaluation(params, overrides or [], model, data, paths)
    errors = {k: round(v, 2) for k, v in result.items() if k.endswith("error")}
    typer.echo(f"evaluated {result['model']} on {result['samples']} images: {errors}")


@app.command("report")
def report_command(
    overrides: Overrides = None,
    params: ParamsOption = Path("params.yaml"),
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment. Default: report.experiment.")
    ] = None,
    grid: Annotated[
        str | None, typer.Option(help="Only runs tagged grid=<name>. Default: report.grid.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Preprocessed CIFAR-10 for Figure 7. Default: data/preprocessed/cifar10."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the HTML page and PNGs.")] = Path(
        "reports/latest"
    ),
    metrics: Annotated[
        Path | None, typer.Option(help="Also write the table's numbers here (DVC metrics).")
    ] = None,
) -> None:
    """The paper's Table 6, Figures 6 and 7 and the ImageNet table from MLflow runs."""
    from resnet_mlops.stages.report import run_report

    report = run_report(
        params, overrides or [], out, experiment=experiment, grid=grid, data=data, metrics=metrics
    )
    typer.echo(f"report: {report.html} ({len(report.figures)} figures)")


@app.command("study")
def study_command(
    name: Annotated[str | None, typer.Argument(help="A study; none lists them.")] = None,
    studies: Annotated[Path, typer.Option(help="The studies file.")] = Path("studies.yaml"),
    params: ParamsOption = Path("params.yaml"),
    flow: Annotated[
        bool, typer.Option("--flow", help="Print Prefect grid flow commands, not DVC ones.")
    ] = False,
    include_optional: Annotated[
        bool, typer.Option("--all", help="Include optional models (ResNet-1202).")
    ] = False,
) -> None:
    """Print a paper study (studies.yaml) as `dvc exp run --queue` lines, checked first."""
    from resnet_mlops.report.studies import (
        dvc_commands,
        flow_commands,
        load_studies,
        validate_study,
    )

    found = load_studies(studies)
    if name is None:
        for study in found.values():
            typer.echo(f"{study.name}: {study.about} (grid {study.grid})")
        return
    if name not in found:
        fail(f"{studies}: no study {name!r} (known: {', '.join(found)})")
    validate_study(found[name], params)
    lines = (flow_commands if flow else dvc_commands)(
        found[name], include_optional=include_optional
    )
    typer.echo("\n".join(lines))


@app.command("import-run")
def import_run_command(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="Folders with history.json and model.pt from train().")
    ],
    grid: Annotated[
        str | None,
        typer.Option(
            help="Tag the runs grid=<name> under the grid's parent run (new if none), as a study's."
        ),
    ] = None,
) -> None:
    """Log training runs made without MLflow (e.g. bench/gpu_recipe.py on a lent GPU)."""
    from resnet_mlops.mlflow_store import tracking_uri
    from resnet_mlops.stages.import_runs import import_grid, import_run

    uri = tracking_uri(Path.cwd())
    if grid:
        ids = import_grid(run_dirs, tracking_uri=uri, grid=grid)
    else:
        ids = [import_run(run_dir, tracking_uri=uri) for run_dir in run_dirs]
    for run_dir, run_id in zip(run_dirs, ids, strict=True):
        typer.echo(f"{run_dir} -> MLflow run {run_id}")


@app.command("sync")
def sync_command(
    history: Annotated[Path, typer.Option(help="The run's journal, beside its model.")] = Path(
        "models/mlflow-history.jsonl"
    ),
    run_id: Annotated[
        str | None, typer.Option(help="Send to this run instead of the recorded one.")
    ] = None,
) -> None:
    """Send what a training run could not send to MLflow: params, metrics, plots, the model.

    Creates the run if the server was down when training started. Safe to repeat.
    """
    from mlflow.exceptions import MlflowException

    from resnet_mlops.mlflow_store import describe, short_http_limits, tracking_uri
    from resnet_mlops.tracking import replay_history

    uri = tracking_uri(Path.cwd())
    try:
        with short_http_limits():
            sent = replay_history(history, run_id, tracking_uri=uri)
    except FileNotFoundError:
        fail(f"{history}: no such file (the journal resnet train writes beside the model)", 1)
    except ValueError as error:
        fail(str(error), 1)
    except MlflowException as error:
        fail(f"MLflow tracking at {uri}: {describe(error)}", 1)
    typer.echo(
        f"sent to run {', '.join(sent.run_ids) or '-'} at {uri}: {sent.metrics} metric values, "
        f"{sent.uploads} artifact uploads, {sent.models} models"
    )


def configure_logging() -> None:
    """Send this package's log records (INFO and up) and other warnings to stderr.

    Set up here, once, before any command imports MLflow: ``import mlflow.pytorch`` calls
    ``logging.basicConfig(level=ERROR)``, which, on an unconfigured root logger, would mute
    every warning of ours. With a handler on the root logger already, that call does nothing,
    and the package's own level keeps it independent of whatever the root's becomes.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("resnet_mlops").setLevel(logging.INFO)
    # MLflow gives its logger an INFO handler of its own at import ("Creating initial MLflow
    # database tables...", "Started monitoring system metrics."): chatter that would bury a
    # one-line error. Its level comes from MLFLOW_LOGGING_LEVEL at import; a user's wins.
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # imported already (tests)


@app.callback()
def main() -> None:
    """Deep Residual Learning (He et al., 2015): models, data, training and tracking."""
    configure_logging()


add_commands(app)

if __name__ == "__main__":
    app()
