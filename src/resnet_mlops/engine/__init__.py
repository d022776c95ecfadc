"""The engine: the device and autocast, evaluation metrics, the model file and the checkpoint."""
