"""MLflow tracking for training runs (:class:`RunTracker`), with an offline journal: what the
server did not get stays in it and ``mlflow-pending/``; ``resnet sync`` (:func:`replay_history`)
sends it later."""

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
