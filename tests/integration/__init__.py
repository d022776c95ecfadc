"""Real components: MLflow servers, DALI pipelines on real images, dvc on tiny repositories,
the ``resnet`` command in a subprocess."""
