"""``python -m resnet_mlops.cli``: the ``resnet`` command (as tests and torchrun launch it)."""

from resnet_mlops.cli import app

app()
