"""`python -m resnet_mlops.cli`: the `resnet` command."""

from resnet_mlops.cli import app

app()
