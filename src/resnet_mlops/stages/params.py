"""The ``params`` stage (``resnet check-params``): params.yaml checked whole before any stage."""

from __future__ import annotations

from pathlib import Path

from resnet_mlops.engine.runtime import require_device
from resnet_mlops.io import check_output_file, write_json_atomic
from resnet_mlops.params import Params, check_pipeline, load_params

# What `resnet check-params --out` writes: the same bytes whatever the params, so that DVC
# reruns no stage downstream of the check because of it (the stages' own params decide).
PARAMS_CHECKED = {"params": "checked"}


def check_params(params_path: Path, overrides: list[str], out: Path | None = None) -> Params:
    """Check keys, types, ranges, relations, the model and the devices; write the marker.

    Raises:
        ConfigError: one line naming the file and the key.
        OutputError: ``out`` is a file ``resnet check-params`` did not write.
    """
    if out is not None:
        check_output_file(out, "check-params --out")
    params, _ = load_params(params_path, overrides)
    check_pipeline(params, params_path)
    require_device(params_path, "train.device", params.train.device)
    require_device(params_path, "evaluate.device", params.evaluate.device)
    if out is not None:
        write_json_atomic(out, PARAMS_CHECKED)
    return params
