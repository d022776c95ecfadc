"""Pure and fast: no servers, no subprocesses of ``resnet``, dvc or Prefect."""
