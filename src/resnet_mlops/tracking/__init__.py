"""MLflow tracking for training runs (:class:`RunTracker`), with an offline journal
(:mod:`resnet_mlops.journal`): what the server did not get stays in it and ``mlflow-pending/``;
``resnet sync`` (:func:`replay_history`) sends it later."""

from resnet_mlops.tracking.runs import TrackingError
from resnet_mlops.tracking.sync import replay_history
from resnet_mlops.tracking.tracker import RunTracker

__all__ = ["RunTracker", "TrackingError", "replay_history"]
