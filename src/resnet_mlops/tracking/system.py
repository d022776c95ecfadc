"""MLflow's system metrics (CPU, memory, disk, network, GPU) for one run, outage-proof.

MLflow's monitor stops for good the first time it cannot reach the run; :meth:`restart`
starts a fresh one, continuing the step count, once the server answers again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class SystemMetrics:
    """Starts, restarts and stops ``mlflow``'s ``SystemMetricsMonitor`` for a run.

    The sampling interval is MLflow's (10 s, or ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``).
    """

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        self._run_id = run_id
        self._tracking_uri = tracking_uri
        self._monitor: Any = None
        self._closed = False
        self._lock = threading.Lock()

    def start(self, *, resume: bool) -> None:
        """Start monitoring; ``resume`` continues the run's system metric steps."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                self._run_id, resume_logging=resume, tracking_uri=self._tracking_uri
            )
        except Exception as error:  # psutil missing, or the server gone again.
            log.warning("no system metrics for run %s: %s", self._run_id, error)
            return
        with self._lock:
            if not self._closed:
                monitor.start()
                self._monitor = monitor

    def restart(self) -> None:
        """Replace the monitor (after an outage stopped it)."""
        with self._lock:
            if self._closed:
                return
            old, self._monitor = self._monitor, None
        if old is not None:
            _finish_within(old, 10.0)
        self.start(resume=True)

    def stop(self, timeout: float) -> None:
        """Stop monitoring and send the last sample, giving up after ``timeout`` seconds."""
        with self._lock:
            self._closed = True
            monitor, self._monitor = self._monitor, None
        if monitor is not None:
            _finish_within(monitor, timeout)


def _finish_within(monitor: Any, timeout: float) -> None:
    # The monitor's finish() joins a thread that may be waiting on an unreachable server.
    thread = threading.Thread(target=monitor.finish, name="mlflow-monitor-stop", daemon=True)
    thread.start()
    thread.join(timeout)
