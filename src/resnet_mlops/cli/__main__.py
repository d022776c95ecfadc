"""``python -m resnet_mlops.cli``: the ``resnet`` command, for a Python without the script."""

from resnet_mlops.cli import app

app()
