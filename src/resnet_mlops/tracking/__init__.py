"""MLflow tracking for training runs, with an offline journal for a server that goes away.

    with RunTracker(experiment=..., tracking_uri=tracking_uri(root), run_id=checkpoint_run_id,
                    history_path=out / "mlflow-history.jsonl") as tracker:
        run_id = tracker.start(config, git_tags(root), data_version=data_md5)
        tracker.log_metrics({"train_loss": loss}, step)
        tracker.log_model(out / "model.pt")  # the run's one model: the pyfunc classifier

What the server did not get stays in the journal and ``mlflow-pending/``; ``resnet sync``
(:func:`replay_history`) sends it later.
"""

from resnet_mlops.tracking.connection import default_tracking_uri, tracking_uri
from resnet_mlops.tracking.history import MetricRecord, read_history, replay_history
from resnet_mlops.tracking.runs import RUN_TAGS_ENV, TrackingError, env_tags, git_tags
from resnet_mlops.tracking.tracker import DATA_VERSION_TAG, RunTracker

__all__ = [
    "DATA_VERSION_TAG",
    "RUN_TAGS_ENV",
    "MetricRecord",
    "RunTracker",
    "TrackingError",
    "default_tracking_uri",
    "env_tags",
    "git_tags",
    "read_history",
    "replay_history",
    "tracking_uri",
]
