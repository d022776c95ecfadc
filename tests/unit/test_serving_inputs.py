"""What ``mlflow models serve`` users send reaches the pyfunc, bad rows are one-line 400s, and
the reading commands never create a tracking store.

The request bodies go through MLflow's own scoring function (``scoring_server.invocations``,
what ``mlflow models serve`` runs per request) on a real saved pyfunc with a tiny network; the
real server with the trained ResNet is in tests/test_registry.py (slow).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from PIL import Image
from typer.testing import CliRunner

from resnet_mlops.cli import app
from resnet_mlops.serving import classifier_model, package
from tests.support.images import black_png

CLASSES = ["a", "b", "c"]


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 90)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's pyfunc code and signature, saved with a tiny exported network (8x8 input)."""
    folder = tmp_path_factory.mktemp("pyfunc")
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(2, len(CLASSES)),
    )
    package.export_network(network, 8, folder / "network.pt2")
    spec = {
        "format": classifier_model.FORMAT,
        "classes": CLASSES,
        "resize_shorter": 8,
        "crop": 8,
        "mean": [100.0, 100.0, 100.0],
        "std": [50.0, 50.0, 50.0],
    }
    (folder / "preprocessing.json").write_text(json.dumps(spec))
    mlflow.pyfunc.save_model(
        str(folder / "model"),
        python_model=classifier_model.__file__,
        artifacts={
            "network": str(folder / "network.pt2"),
            "preprocessing": str(folder / "preprocessing.json"),
        },
        signature=package.signature(CLASSES),
        pip_requirements=["torch"],
    )
    return folder / "model"


def invoke(model: mlflow.pyfunc.PyFuncModel, body: str, content_type: str) -> list[dict]:
    answer = scoring_server.invocations(
        body, content_type, model, model.metadata.get_input_schema()
    )
    assert answer.status == 200, answer.response
    return json.loads(answer.response)["predictions"]


def refusal(model: mlflow.pyfunc.PyFuncModel, body: str, content_type: str) -> dict:
    """The JSON body and status ``mlflow models serve`` answers a refused request with."""
    with pytest.raises(MlflowException) as refused:
        scoring_server.invocations(body, content_type, model, model.metadata.get_input_schema())
    return {"status": refused.value.get_http_status_code()} | json.loads(
        refused.value.serialize_as_json()
    )


def test_the_common_request_forms_all_reach_predict_as_the_same_images(saved_model: Path) -> None:
    model = mlflow.pyfunc.load_model(str(saved_model))
    images = [png(20, 10, (1, 2, 3)), jpeg(9, 12)]
    expected = model.predict(pd.DataFrame({"image": images})).to_dict("records")
    b64 = [base64.b64encode(i).decode() for i in images]
    bodies = {
        "dataframe_split": {"dataframe_split": {"columns": ["image"], "data": [[b] for b in b64]}},
        "dataframe_records": {"dataframe_records": [{"image": b} for b in b64]},
        "inputs as columns": {"inputs": {"image": b64}},
        "inputs as a list": {"inputs": b64},
        "instances as records": {"instances": [{"image": b} for b in b64]},
        "instances as a list": {"instances": b64},
    }
    for name, body in bodies.items():
        got = invoke(model, json.dumps(body), "application/json")
        assert len(got) == 2, name
        for ours, theirs in zip(got, expected, strict=True):
            assert ours.keys() == theirs.keys(), name
            np.testing.assert_allclose(list(ours.values()), list(theirs.values()), rtol=1e-5)
    csv = pd.DataFrame({"image": b64}).to_csv(index=False)
    got = invoke(model, csv, "text/csv")
    np.testing.assert_allclose(
        [list(r.values()) for r in got], [list(r.values()) for r in expected], rtol=1e-5
    )


def test_a_bad_row_is_a_one_line_400_naming_the_row(saved_model: Path) -> None:
    model = mlflow.pyfunc.load_model(str(saved_model))
    good = base64.b64encode(png(8, 8, (9, 9, 9))).decode()
    truncated = base64.b64encode(jpeg(40, 40)[:200]).decode()
    bomb = base64.b64encode(black_png(30_000, 30_000)).decode()
    cases = [
        ({"inputs": {"image": [good, base64.b64encode(b"hello").decode()]}}, "row 1: not an image"),
        ({"instances": [good, good, truncated]}, "row 2: truncated or corrupt image"),
        (
            {"dataframe_split": {"columns": ["image"], "data": [[bomb]]}},
            "row 0: image too large: 900000000 pixels, over the cap of 89478485",
        ),
    ]
    for body, start in cases:
        answer = refusal(model, json.dumps(body), "application/json")
        assert answer["status"] == 400, answer
        assert answer["message"].startswith(start), answer
        assert "\n" not in answer["message"] and "stack_trace" not in answer, answer
    answer = refusal(model, "image\nnot-base64-and-not-an-image\n", "text/csv")
    assert answer["status"] == 400 and answer["message"] == "row 0: not an image", answer
    # In Python the same error is a ValueError, as before.
    with pytest.raises(ValueError, match=r"^row 0: not an image$"):
        model.predict(pd.DataFrame({"image": [b"plain text"]}))


def test_raw_image_files_are_never_taken_for_base64() -> None:
    for data in (png(3, 3, (65, 65, 65)), jpeg(5, 5), black_png(4, 4)):
        assert classifier_model.image_bytes(data) == data
        assert classifier_model.image_bytes(base64.b64encode(data)) == data
        assert classifier_model.image_bytes(base64.b64encode(data).decode()) == data
    with pytest.raises(TypeError, match="got int"):
        classifier_model.image_bytes(7)


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_pull_and_predict_outside_a_project_create_no_store(
    saved_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.png").write_bytes(png(8, 8, (5, 6, 7)))
    expected = (
        "error: no MLflow tracking server or registry is configured: MLFLOW_TRACKING_URI is not "
        f"set and there is no {tmp_path.resolve() / 'mlflow.db'}; set MLFLOW_TRACKING_URI="
    )
    for args in (
        ("pull", "models:/classifier@champion", "--out", "champion"),
        ("predict", "--model", "models:/classifier@champion", "cat.png"),
    ):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), (args, result.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png"], args
    # A local model folder needs no store, and none appears.
    result = cli("predict", "--model", str(saved_model), "--json", "cat.png")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["image"] == "cat.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.png"]
