"""One training run as one MLflow run: params, tags, metrics, files, the model, the outcome."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shlex
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric

from resnet_mlops import journal
from resnet_mlops.engine.artifact import load_model
from resnet_mlops.io import OUTPUT_ERRNOS, sha256_file
from resnet_mlops.journal import PENDING_DIR, MetricRecord, RunEnd, RunStart, Upload
from resnet_mlops.lineage import DATA_VERSION_TAG
from resnet_mlops.mlflow_store import describe, is_permanent, short_http_limits
from resnet_mlops.params.base import flatten
from resnet_mlops.serving.package import ARTIFACT_NAME, model_summary, write_model_files
from resnet_mlops.tracking import runs
from resnet_mlops.tracking.runs import TrackingError
from resnet_mlops.tracking.sync import send_upload

log = logging.getLogger(__name__)

STATUSES = ("FINISHED", "FAILED", "KILLED")


class RunTracker:
    """Records a training run in MLflow without holding up, or stopping, the training.

    Metrics go to the journal (``history_path``) and, with MLflow's asynchronous ``log_batch``,
    to the server; files and the model go through ``mlflow-pending/`` and stay there when the
    server does not take them. :meth:`finish` names in one warning what the server lacks and
    the ``resnet sync`` command that sends it. As a context manager the run ends FINISHED,
    FAILED on an exception, KILLED on Ctrl-C.

    Args:
        experiment: The MLflow experiment, created if missing.
        tracking_uri: Where runs go.
        run_name: A display name for a new run.
        run_id: Continue this run (a resumed training) instead of creating one.
        required: An unreachable server at :meth:`start` or :meth:`log_model` is an error.
        history_path: The journal; without it nothing the server misses is kept.
        system_metrics: Log MLflow's system metrics (CPU, memory, GPU; needs psutil).
        resumed: Continue the journal (default: whether ``run_id`` is given); a new run
            rewrites it, keeping aside one the server never fully got.
    """

    flush_timeout_s = 30.0  # how long finish() waits for metrics in flight

    def __init__(
        self,
        *,
        experiment: str,
        tracking_uri: str,
        run_name: str | None = None,
        run_id: str | None = None,
        required: bool = False,
        history_path: Path | None = None,
        system_metrics: bool = True,
        resumed: bool | None = None,
    ) -> None:
        self.experiment, self.tracking_uri, self.run_name = experiment, tracking_uri, run_name
        self.run_id, self.required = run_id, required
        self.history_path, self.system_metrics = history_path, system_metrics
        self._resuming = run_id is not None if resumed is None else resumed
        self._state = "new"
        self._client: MlflowClient | None = None
        self._sent: list[tuple[Any, list[Metric]]] = []  # MLflow's RunOperations, and values
        self._kept: list[str] = []  # what waits in mlflow-pending/, for the final warning
        self._monitor: Any = None
        self._monitor_pending = False
        self._scope = contextlib.ExitStack()

    @property
    def active(self) -> bool:
        """Whether values are being sent to an open MLflow run."""
        return self._client is not None and self._state == "started"

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        self.finish("FINISHED" if kind is None else "KILLED" if interrupted else "FAILED")

    def start(
        self,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        *,
        data_version: str | None = None,
    ) -> str | None:
        """Open (or re-open) the run; log the params (flattened, and whole as ``params.json``;
        a resumed run keeps its own, with a warning), the tags and ``data_version``.

        Returns:
            The run id (kept on resume even when the server is down), or None.

        Raises:
            TrackingError: ``required`` and the run could not be opened.
        """
        if self._state != "new":
            raise RuntimeError("RunTracker.start() was already called")
        self._state = "started"
        self._scope.enter_context(short_http_limits())
        all_tags = {**(tags or {}), **({DATA_VERSION_TAG: data_version} if data_version else {})}
        try:
            client = MlflowClient(self.tracking_uri)
            self.run_id = runs.open_run(
                client, self.experiment, self.tracking_uri, self.run_id, self.run_name, all_tags
            )
            runs.log_params_and_tags(client, self.run_id, params, all_tags)
            self._client = client
        except Exception as error:
            message = f"MLflow tracking at {self.tracking_uri} is unavailable: {describe(error)}"
            if self.required:
                self._scope.close()
                self._state = "finished"
                raise TrackingError(message) from error
            self._warn(
                f"{message}; training goes on, and the run (params, metrics, plots, model) is"
            )
        self._open_journal()
        if self._client is None and self.history_path is not None:  # what resnet sync creates
            start = RunStart(self.experiment, self.run_name, params, all_tags, self.run_id)
            journal.append(self.history_path, start)
        # Started after the first metrics are stored (log_metrics): MLflow lists a run's metrics
        # in the order they were first stored and its compare view defaults to the first, so
        # the monitor's system/cpu_utilization_percentage must not come before the error rates.
        self._monitor_pending = self._client is not None and self.system_metrics
        text = json.dumps(flatten(params), indent=2, sort_keys=True, default=str) + "\n"
        self._upload("params.json", lambda folder: (folder / "params.json").write_text(text))
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Journal metric values for a step and queue them for MLflow; returns at once."""
        self._check_started()
        values = {key: float(value) for key, value in metrics.items()}
        record = MetricRecord(int(step), int(time.time() * 1000), values, self.run_id)
        if self.history_path is not None:
            journal.append(self.history_path, record)
        if self._client is None:
            return
        batch, first = record.to_mlflow(), self._monitor_pending
        with contextlib.suppress(Exception):  # the journal has them
            # The first batch is stored before the monitor starts (see start()).
            ops = self._client.log_batch(self.run_id, metrics=batch, synchronous=first)  # type: ignore[arg-type]
            if not first:
                self._sent.append((ops, batch))
        if first:
            self._monitor_pending = False
            try:  # imported here: it needs psutil
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._monitor = SystemMetricsMonitor(
                    self.run_id, resume_logging=self._resuming, tracking_uri=self.tracking_uri
                )
                self._monitor.start()
            except Exception as error:  # psutil missing, or the server gone again.
                log.warning("no system metrics for run %s: %s", self.run_id, error)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Upload a file (as ``artifact_path/<name>``) or a folder's contents (under
        ``artifact_path``)."""
        target = f"{artifact_path}/" if artifact_path else ""

        def copy(folder: Path) -> None:
            (folder / target).mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, folder / target, dirs_exist_ok=True)
            else:
                shutil.copy2(path, folder / target)

        self._upload((target or "./") if path.is_dir() else target + path.name, copy)

    def log_model(self, model_path: Path) -> str | None:
        """Log ``model.pt`` as the run's only model, the pyfunc classifier; returns its
        ``models:/`` URI, or None.

        Raises:
            TrackingError: ``required`` and the server could not be reached.
        """
        self._check_started()
        model, meta = load_model(model_path)
        metadata = model_summary(meta, sha256_file(model_path))
        write = functools.partial(write_model_files, model, meta, model_path)
        options = {"metadata": metadata}
        return self._upload(f"model {ARTIFACT_NAME!r}", write, model=ARTIFACT_NAME, options=options)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run: wait (``flush_timeout_s`` at most) for metrics in flight, resend those
        MLflow dropped, set ``status`` (FINISHED, FAILED, KILLED), warn about what is missing."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if self._state != "started":
            return
        self._state = "finishing"
        if self._monitor is not None:  # its finish() may wait on an unreachable server
            _within(self._monitor.finish, min(10.0, self.flush_timeout_s))
        unsent = self._flush()
        end = RunEnd(status, int(time.time() * 1000), self.run_id)
        journal_error: OSError | None = None
        if self.history_path is not None:
            try:
                journal.append(self.history_path, end)
            except OSError as error:  # a full disk: the run still ends on the server
                journal_error = error
        ended = self._client is None
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.set_terminated(self.run_id, status=status, end_time=end.timestamp)  # type: ignore[arg-type]
                ended = True
        missing = [] if self._client is not None else ["the run's params"]
        missing += [f"{unsent} metric values"] if unsent or self._client is None else []
        missing += self._kept + ([] if ended else [f"the run's end ({status})"])
        if missing:
            listed = ", ".join(missing[:-1]) + " and " + missing[-1] if missing[1:] else missing[0]
            self._warn(f"{listed} did not reach MLflow at {self.tracking_uri}; they are")
        if journal_error is not None and not ended:
            log.warning("the run's end (%s) is not in %s either", status, journal_error)
        if self.history_path is not None and not self._resuming:
            # A journal this run created and could not write to (a full disk from the start)
            # holds nothing; left behind, it would look like a run's record.
            with contextlib.suppress(OSError):
                if self.history_path.stat().st_size == 0:
                    self.history_path.unlink()
        self._scope.close()
        self._state = "finished"

    def _check_started(self) -> None:
        if self._state != "started":
            raise RuntimeError(f"RunTracker is {self._state}; call start() first, finish() last")

    def _upload(self, label: str, write: Callable[[Path], Any], **model: Any) -> str | None:
        """``write`` the files into a new folder of ``mlflow-pending/``, journaled (without a
        journal: a temporary folder), then send it (which removes it) if the run is open: a
        kill mid-upload, or a server that does not take it, leaves it for ``resnet sync``.
        Returns the model's ``models:/`` URI, or None."""
        self._check_started()
        if self._client is None and self.history_path is None:
            return None
        with tempfile.TemporaryDirectory(prefix="resnet-upload-") as tmp:
            parent = self.history_path.parent if self.history_path else Path(tmp)
            folder = parent / PENDING_DIR / uuid.uuid4().hex
            try:
                folder.mkdir(parents=True)
                write(folder)
            except OSError as error:  # a full disk: name the folder, leave no half of it
                shutil.rmtree(folder, ignore_errors=True)
                if error.errno not in OUTPUT_ERRNOS:
                    raise
                raise OSError(error.errno, error.strerror, str(folder.parent)) from error
            upload = Upload(folder.relative_to(parent).as_posix(), **model, run_id=self.run_id)
            if self.history_path is not None:
                journal.append(self.history_path, upload)
            try:
                if self.active:
                    sent = send_upload(self.tracking_uri, self.run_id, upload, folder)  # type: ignore[arg-type]
                    with contextlib.suppress(OSError):  # the last one out of mlflow-pending/
                        folder.parent.rmdir()
                    return sent
            except Exception as error:
                if model and is_permanent(error):
                    raise
                message = f"could not log {label} to {self.tracking_uri}: {describe(error)}"
                if model and self.required:
                    raise TrackingError(message) from error
                log.warning("%s", message)
        if self.history_path is not None:
            self._kept.append(label)
        return None

    def _flush(self) -> int:
        """Wait for MLflow's async batches, resend the values of failed ones; count unsent."""
        if self._client is None:
            records = journal.read_history(self.history_path)[0] if self.history_path else []
            return sum(len(r.metrics) for r in records)
        failed: list[Metric] = []

        def wait() -> None:
            for operations, batch in self._sent:
                try:
                    operations.wait()
                except Exception:  # MLflow dropped the batch: only the journal has it now
                    failed.extend(batch)

        if not _within(wait, self.flush_timeout_s):
            # Batches still queued are sent at exit by MLflow: keep them to one short attempt.
            self._scope.pop_all()
            return sum(len(batch) for _, batch in self._sent)
        try:
            if failed:
                self._client.log_batch(self.run_id, metrics=failed)  # type: ignore[arg-type]
            return 0
        except Exception:
            return len(failed)

    def _open_journal(self) -> None:
        path = self.history_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._resuming:
            return
        if path.exists() and journal.holds_unsent(path):  # a new run rewrites it: keep this
            kept = path.with_suffix(f".{time.time_ns() // 1_000_000}.jsonl")
            os.replace(path, kept)
            log.warning(
                "%s held what MLflow never got from an earlier run; kept as %s; send it with: %s",
                *(path, kept, self._sync_command(kept)),
            )
        path.write_text("", encoding="utf-8")

    def _warn(self, message: str) -> None:
        """``message`` ends with "is"/"are": where it is kept and how to send it follow."""
        if self.history_path is None:
            log.warning("%s not kept: no history_path was given", message)
            return
        where = f"{self.history_path} and {self.history_path.parent / PENDING_DIR}"
        log.warning("%s kept in %s; send with: %s", message, where, self._sync_command())

    def _sync_command(self, history: Path | None = None) -> str:
        uri, path = shlex.quote(self.tracking_uri), shlex.quote(str(history or self.history_path))
        return f"MLFLOW_TRACKING_URI={uri} resnet sync --history {path}"


def _within(call: Callable[[], Any], timeout: float) -> bool:
    """Run ``call`` in a thread for at most ``timeout`` seconds; whether it ended."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()
