"""MLflow tracking for training runs, resilient to a tracking server that goes away.

The trainer, on rank 0 (other ranks pass ``enabled=False``)::

    uri = tracking_uri(root)  # MLFLOW_TRACKING_URI, or <root>/mlflow.db
    with RunTracker(experiment=cfg.experiment, tracking_uri=uri, run_id=checkpoint_run_id,
                    history_path=out / "history.jsonl") as tracker:
        run_id = tracker.start(to_dict(cfg), git_tags(root), data_version=data_md5)
        for step in ...:
            tracker.log_metrics({"train_loss": loss, "lr": lr, "images_per_s": ips}, step)
        tracker.log_curves(out / "curves.png", x_label="iteration")
        tracker.log_model(model, example_batch)

The history file (a journal) and the ``mlflow-pending/`` folder beside it keep whatever the
server did not get; ``resnet sync`` (:func:`replay_history`) sends it later.
"""

from resnet_mlops.tracking.connection import default_tracking_uri, tracking_uri
from resnet_mlops.tracking.curves import plot_curves
from resnet_mlops.tracking.env import RUN_TAGS_ENV, env_tags
from resnet_mlops.tracking.git import git_tags
from resnet_mlops.tracking.history import MetricRecord, read_history, replay_history
from resnet_mlops.tracking.tracker import DATA_VERSION_TAG, RunTracker, TrackingError

__all__ = [
    "DATA_VERSION_TAG",
    "RUN_TAGS_ENV",
    "MetricRecord",
    "RunTracker",
    "TrackingError",
    "default_tracking_uri",
    "env_tags",
    "git_tags",
    "plot_curves",
    "read_history",
    "replay_history",
    "tracking_uri",
]
