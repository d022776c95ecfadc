"""One training run as one MLflow run: params, tags, metrics, plots, the model, the outcome."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from torch import nn

from resnet_mlops.config import flatten
from resnet_mlops.data.io import OUTPUT_ERRNOS
from resnet_mlops.tracking.connection import short_http_limits
from resnet_mlops.tracking.curves import plot_curves
from resnet_mlops.tracking.history import (
    PENDING_DIR,
    HistoryJournal,
    MetricRecord,
    RunEnd,
    RunStart,
    Upload,
    read_history,
    read_journal,
)
from resnet_mlops.tracking.model import log_pytorch_model, save_pytorch_model
from resnet_mlops.tracking.runs import TrackingError, log_params_and_tags, open_run
from resnet_mlops.tracking.system import SystemMetrics
from resnet_mlops.tracking.uploader import Uploader, describe, is_permanent

log = logging.getLogger(__name__)

DATA_VERSION_TAG = "data.version"
PARAMS_ARTIFACT = "params.json"
STATUSES = ("FINISHED", "FAILED", "KILLED")
STAGING_PREFIX = "resnet-mlflow-"  # + "<pid>-": a journal-less tracker's temporary folder


def _sweep_stale_staging() -> None:
    """Remove the temporary folders of journal-less trackers whose process is gone (a kill).

    Only folders with our prefix and a pid (``resnet-mlflow-<pid>-<random>``), owned by this
    user, whose pid no longer runs: another user's, a live process's, or one we cannot
    attribute (an older name without a pid) are left alone.
    """
    for folder in Path(tempfile.gettempdir()).glob(f"{STAGING_PREFIX}*-*"):
        parts = folder.name.split("-")
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        try:
            if folder.stat().st_uid == os.getuid():
                os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # Gone already, or the pid runs under another user: alive.
            continue


def _holds_unsent(history: Path) -> bool:
    """Whether a journal names a run never created or files never sent (an unreadable one
    counts too: it is not ours to discard)."""
    if not history.exists():
        return False
    try:
        records = read_journal(history)
    except (OSError, ValueError):
        return True
    return any(
        (isinstance(r, RunStart) and r.run_id is None)
        or (isinstance(r, Upload) and (history.parent / r.folder).exists())
        for r in records
    )


class RunTracker:
    """Records a training run in MLflow without ever holding up, or stopping, the training.

    Metrics go to a local journal (``history_path``) at once and to the server from a
    background thread that keeps and retries them while the server is down. Files to upload
    (params.json, plots, a model the server could not take) are kept in ``mlflow-pending/``
    beside the journal until they reach the server. Whatever has not reached it when the run
    finishes, the whole run if the server was down at the start, is named in one warning and
    sent later by ``resnet sync`` (:func:`replay_history`). As a context manager it finishes
    the run FINISHED, FAILED on an exception, KILLED on Ctrl-C.

    Args:
        experiment: The MLflow experiment, created if missing.
        tracking_uri: Where runs go (``MLFLOW_TRACKING_URI`` or :func:`default_tracking_uri`,
            decided by the entry point).
        run_name: A display name for a new run.
        run_id: Continue this run (a resumed training) instead of creating one.
        enabled: False makes every method a no-op, for ranks other than 0.
        required: Make an unreachable server at :meth:`start` an error instead of a warning.
            Outages later in the run never stop the training.
        history_path: The local journal (JSON Lines). Rewritten by a new run, appended to
            by a resumed one. Without it nothing is kept for a later replay, and uploads
            are staged in a temporary folder.
        resumed: Whether this continues an earlier session of the run (appends to the
            journal); default: whether ``run_id`` is given. A run resumed while the server
            was down has no id but must keep its journal.
        system_metrics: Log MLflow's system metrics (CPU, memory, GPU; needs psutil).
        flush_timeout_s: How long :meth:`finish` waits for queued uploads.
    """

    def __init__(
        self,
        *,
        experiment: str,
        tracking_uri: str,
        run_name: str | None = None,
        run_id: str | None = None,
        enabled: bool = True,
        required: bool = False,
        history_path: Path | None = None,
        system_metrics: bool = True,
        flush_timeout_s: float = 30.0,
        resumed: bool | None = None,
    ) -> None:
        self.experiment = experiment
        self.tracking_uri = tracking_uri
        self.run_name = run_name
        self.run_id = run_id
        self.enabled = enabled
        self.required = required
        self.history_path = history_path
        self.system_metrics = system_metrics
        self.flush_timeout_s = flush_timeout_s
        self._resuming = run_id is not None if resumed is None else resumed
        self._state = "new"
        self._history: list[MetricRecord] = []
        self._client: MlflowClient | None = None
        self._journal: HistoryJournal | None = None
        self._uploader: Uploader | None = None
        self._monitor: SystemMetrics | None = None
        self._staging: Path | None = None
        self._kept: dict[Path, str] = {}  # staged folder -> what it holds, for messages
        self._queued: list[Path] = []  # staged folders handed to the uploader
        self._scope = contextlib.ExitStack()

    @property
    def active(self) -> bool:
        """Whether values are being sent to an open MLflow run."""
        return self._client is not None and self._state == "started"

    @property
    def history(self) -> tuple[MetricRecord, ...]:
        """Every metric record of the run so far, including those before a resume."""
        return tuple(self._history)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("KILLED")
        else:
            self.finish("FAILED")

    def start(
        self,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        *,
        data_version: str | None = None,
    ) -> str | None:
        """Open (or re-open) the run and record the config and where the run came from.

        Makes one short HTTP attempt per request (``connection.HTTP_LIMITS``) rather than
        MLflow's minutes of retries, so a server that is down is reported within seconds.

        Args:
            params: The config, nested or flat; logged flattened (``train.lr``), each value
                cut to MLflow's 6000 characters, and in full as the artifact ``params.json``.
                On resume, values that differ from the run's keep the run's, with a warning.
            tags: Extra run tags, e.g. :func:`git_tags`.
            data_version: The data set's version (e.g. its DVC hash), as tag ``data.version``.

        Returns:
            The run id the metrics are recorded under (kept on resume even when the server
            is down, so a checkpoint can store it), or None when tracking is disabled or no
            new run could be created. :attr:`active` tells whether the run is being tracked.

        Raises:
            TrackingError: ``required`` and the run could not be opened.
        """
        if not self.enabled:
            return None
        if self._state != "new":
            raise RuntimeError("RunTracker.start() was already called")
        self._state = "started"
        self._scope.enter_context(short_http_limits())
        all_tags = dict(tags or {})
        if data_version is not None:
            all_tags[DATA_VERSION_TAG] = data_version
        client, created = None, None
        try:
            client = MlflowClient(self.tracking_uri)
            run_id, old_params, old_tags = open_run(
                client,
                experiment=self.experiment,
                tracking_uri=self.tracking_uri,
                run_id=self.run_id,
                run_name=self.run_name,
                tags=all_tags,
            )
            created = run_id if run_id != self.run_id else None
            self.run_id = run_id
            log_params_and_tags(client, run_id, params, all_tags, existing=(old_params, old_tags))
            self._client = client
        except Exception as error:
            self._unavailable(client, created, error)
        self._open_history()
        self._open_staging()
        if self._client is not None:
            self._start_uploads()
        elif self._journal is not None:  # What resnet sync creates the run with.
            name = self.run_name
            self._journal.write(RunStart(self.experiment, name, params, all_tags, self.run_id))
        full = json.dumps(flatten(params), indent=2, sort_keys=True, default=str) + "\n"
        self._stage_text(PARAMS_ARTIFACT, full)
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record metric values for a step; returns at once and never raises for the server.

        Args:
            metrics: Name to value (Python or NumPy numbers, 0-d tensors).
            step: The x coordinate: iteration or epoch, the same unit for every call.
        """
        if not self.enabled:
            return
        self._require_started()
        record = MetricRecord(
            step=int(step),
            timestamp=int(time.time() * 1000),
            metrics={key: float(value) for key, value in metrics.items()},
            run_id=self.run_id,
        )
        self._history.append(record)
        if self._journal is not None:
            self._journal.write(record)
        if self._uploader is not None:
            self._uploader.put_metrics(record.to_mlflow())

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, in the background.

        A copy is taken now, so the caller may overwrite the file right away.

        Args:
            path: A file (stored as ``artifact_path/<name>``) or a folder (its contents
                stored under ``artifact_path``).
            artifact_path: The folder within the run's artifacts; None for the top.
        """
        if not self.enabled:
            return
        self._require_started()
        if self._uploader is None and self._journal is None:
            return  # Neither sent nor kept: nothing to copy.
        with self._staged() as folder:
            # The folder mirrors the run's artifact tree, so it is sent as it is, now or later.
            target = folder / artifact_path if artifact_path else folder
            if path.is_dir():
                shutil.copytree(path, target, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)
        if path.is_dir():
            self._keep(folder, f"{artifact_path or '.'}/")
        else:
            self._keep(folder, f"{artifact_path}/{path.name}" if artifact_path else path.name)

    def log_curves(
        self, path: Path, *, x_label: str = "step", artifact_path: str = "plots"
    ) -> Path | None:
        """Draw the loss and error curves of the run so far to ``path`` and upload the PNG.

        The PNG is written even when no run is open, so it serves as a local plot too.

        Returns:
            ``path``, or None when tracking is disabled.
        """
        if not self.enabled:
            return None
        self._require_started()
        plot_curves(self._history, path, x_label=x_label)
        self.log_artifact(path, artifact_path)
        return path

    def log_model(
        self, model: nn.Module, input_example: np.ndarray, *, name: str = "model", **kwargs: Any
    ) -> str | None:
        """Log the trained model with a signature and an input example; see
        :func:`~resnet_mlops.tracking.model.log_pytorch_model`.

        Blocks until the model is stored: call it once, after training.

        Args:
            model: The trained network.
            input_example: A small float32 batch (2 or more inputs: a batch of 1 would fix
                the batch size of the exported model).
            name: The logged model's name.
            **kwargs: Passed on to ``mlflow.pytorch.log_model`` (``registered_model_name``,
                ``metadata``, ``pip_requirements``, ...).

        Returns:
            The model URI (``models:/<model id>``), or None when no run is open or the server
            could not be reached.

        Raises:
            TrackingError: ``required`` and the server could not be reached.
        """
        if not self.enabled:
            return None
        self._require_started()
        if self.active:
            assert self.run_id is not None
            try:
                return log_pytorch_model(
                    model,
                    input_example,
                    tracking_uri=self.tracking_uri,
                    run_id=self.run_id,
                    name=name,
                    **kwargs,
                )
            except MlflowException as error:
                if is_permanent(error):
                    raise
                message = f"could not log model {name!r} to {self.tracking_uri}: "
                message += describe(error)
                if self.required:
                    raise TrackingError(message) from error
                log.warning("%s", message)
        if self._journal is not None:  # Kept for resnet sync; the end of run warning says so.
            with self._staged() as folder:
                save_pytorch_model(model, input_example, folder)
            self._journal.write(Upload(self._relative(folder), name, kwargs, self.run_id))
            self._kept[folder] = f"model {name!r}"
        return None

    def finish(self, status: str = "FINISHED") -> None:
        """End the run: flush queued uploads (bounded by ``flush_timeout_s``), set the status.

        Always completes the local history. What did not reach the server is reported in one
        warning, with the call that sends it later. A second call, or one before
        :meth:`start`, does nothing.

        Args:
            status: ``FINISHED``, ``FAILED`` or ``KILLED``.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if not self.enabled or self._state != "started":
            return
        self._state = "finishing"
        deadline = time.monotonic() + self.flush_timeout_s
        if self._monitor is not None:
            self._monitor.stop(min(10.0, self.flush_timeout_s))
        unsent, unsent_artifacts = 0, []
        if self._uploader is not None:
            unsent, unsent_artifacts = self._uploader.close(max(0.0, deadline - time.monotonic()))
        end = RunEnd(status=status, timestamp=int(time.time() * 1000), run_id=self.run_id)
        journal_error: OSError | None = None
        if self._journal is not None:
            try:
                self._journal.write(end)
            except OSError as error:  # a full disk: the run still ends on the server
                journal_error = error
            self._journal.close()
        ended = True
        if self._client is not None and self.run_id is not None:
            try:
                self._client.set_terminated(self.run_id, status=status, end_time=end.timestamp)
            except Exception as error:
                ended = False
                log.debug("could not end MLflow run %s: %s", self.run_id, describe(error))
        sent = [folder for folder in self._queued if folder not in dict(unsent_artifacts)]
        for folder in sent:  # Ours, and on the server now.
            shutil.rmtree(folder, ignore_errors=True)
            del self._kept[folder]
        self._report_unsent(unsent, ended, status)
        if journal_error is not None and not ended:
            log.warning("the run's end (%s) is not in %s either", status, journal_error)
        self._remove_empty_journal()
        if self._staging is not None and self._journal is None:
            shutil.rmtree(self._staging, ignore_errors=True)  # Nothing refers to it.
        elif self._staging is not None and not self._kept:
            with contextlib.suppress(OSError):  # Empty, unless another run's files are there.
                self._staging.rmdir()
        self._scope.close()
        self._state = "finished"

    def _require_started(self) -> None:
        if self._state != "started":
            raise RuntimeError(f"RunTracker is {self._state}; call start() first, finish() last")

    def _unavailable(
        self, client: MlflowClient | None, created: str | None, error: Exception
    ) -> None:
        message = f"MLflow tracking at {self.tracking_uri} is unavailable: {describe(error)}"
        if client is not None and created is not None:  # Leave no half-set-up run RUNNING.
            with contextlib.suppress(Exception):
                client.set_terminated(created, status="FAILED")
            self.run_id = None
        if self.required:
            self._scope.close()
            self._state = "finished"
            raise TrackingError(message) from error
        if self.history_path is None:
            log.warning("%s. Training goes on without tracking", message)
            return
        log.warning(
            "%s. Training goes on; the run (params, metrics, plots, model) is kept in %s and %s "
            "and can be sent later with: %s",
            message,
            self.history_path,
            self.history_path.parent / PENDING_DIR,
            self._sync_command(),
        )

    def _open_history(self) -> None:
        if self.history_path is None:
            return
        if not self._resuming and _holds_unsent(self.history_path):
            # A new run rewrites the journal; one the server never fully got is kept aside.
            kept = self.history_path.with_suffix(f".{time.time_ns() // 1_000_000}.jsonl")
            os.replace(self.history_path, kept)
            log.warning(
                "%s held what MLflow never got from an earlier run; kept as %s; send it with: %s",
                self.history_path,
                kept,
                self._sync_command(kept),
            )
        if self._resuming and self.history_path.exists():
            self._history.extend(read_history(self.history_path)[0])
        self._journal = HistoryJournal(self.history_path, append=self._resuming)

    def _open_staging(self) -> None:
        if self.history_path is not None:
            self._staging = self.history_path.parent / PENDING_DIR  # created when first used
        elif self._client is not None:
            _sweep_stale_staging()
            self._staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-"))

    def _start_uploads(self) -> None:
        assert self.run_id is not None
        if self.system_metrics:
            self._monitor = SystemMetrics(self.run_id, self.tracking_uri)
            self._monitor.start(resume=self._resuming)
        self._uploader = Uploader(
            MlflowClient(self.tracking_uri),
            self.run_id,
            where=self.tracking_uri,
            on_reconnect=self._monitor.restart if self._monitor else None,
        )

    @contextlib.contextmanager
    def _staged(self) -> Iterator[Path]:
        """A new folder in the staging area for the block to fill; removed if the block fails.

        A full disk is re-raised naming the staging area (``models/mlflow-pending: no space
        left on device``): a write's own error names no file, and shutil's names the source.
        """
        assert self._staging is not None
        folder = self._staging / uuid.uuid4().hex
        try:
            folder.mkdir(parents=True)
            yield folder
        except BaseException as error:
            shutil.rmtree(folder, ignore_errors=True)
            if isinstance(error, OSError) and error.errno in OUTPUT_ERRNOS:
                raise OSError(error.errno, error.strerror, str(self._staging)) from error
            raise

    def _relative(self, folder: Path) -> str:
        assert self.history_path is not None
        return folder.relative_to(self.history_path.parent).as_posix()

    def _keep(self, folder: Path, label: str) -> None:
        """Journal a staged folder (before it is queued: a kill in between keeps it) and
        queue it for upload."""
        self._kept[folder] = label
        if self._journal is not None:
            self._journal.write(Upload(self._relative(folder), run_id=self.run_id))
        if self._uploader is not None:
            self._queued.append(folder)
            self._uploader.put_artifact(folder, None)

    def _stage_text(self, name: str, text: str) -> None:
        if self._uploader is None and self._journal is None:
            return
        with self._staged() as folder:
            (folder / name).write_text(text, encoding="utf-8")
        self._keep(folder, name)

    def _remove_empty_journal(self) -> None:
        """A journal this run created and could not write one line to (a full disk from the
        start) holds nothing; left behind, it would look like a run's record."""
        if self.history_path is None or self._resuming:
            return
        with contextlib.suppress(OSError):
            if self.history_path.stat().st_size == 0:
                self.history_path.unlink()

    def _report_unsent(self, unsent: int, ended: bool, status: str) -> None:
        """One warning naming what the server is missing and the command that sends it."""
        if self._client is None:
            values = sum(len(record.metrics) for record in self._history)
            parts = ["the run's params", f"{values} metric values"]
        else:
            parts = [f"{unsent} metric values"] if unsent else []
        parts += list(self._kept.values())
        parts += [] if ended else [f"the run's end ({status})"]
        if not parts:
            return
        listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        missing = f"{listed} did not reach MLflow at {self.tracking_uri}"
        if self.history_path is None:
            log.warning("%s, and no history_path was given to keep them", missing)
            return
        log.warning(
            "%s; they are kept in %s and %s; send them with: %s",
            missing,
            self.history_path,
            self.history_path.parent / PENDING_DIR,
            self._sync_command(),
        )

    def _sync_command(self, history: Path | None = None) -> str:
        uri, path = shlex.quote(self.tracking_uri), shlex.quote(str(history or self.history_path))
        return f"MLFLOW_TRACKING_URI={uri} resnet sync --history {path}"
