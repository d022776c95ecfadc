"""The Model Registry against a real ``mlflow server``: register, the champion rule both ways,
pull, predict, a pyfunc load that cannot import this project, ``mlflow models serve``, and the
one-line errors of bad input."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from resnet_mlops.engine.artifact import load_model
from resnet_mlops.io import describe_outputs
from resnet_mlops.mlflow_store import default_tracking_uri
from resnet_mlops.project import project_root
from resnet_mlops.registry.champion import Standing, decide
from resnet_mlops.registry.connection import (
    ModelRef,
    RegistryError,
    parse_model_uri,
)
from resnet_mlops.registry.register import RegisterParams, RegisterPaths, register
from resnet_mlops.registry.scoring import split_version, top1_error
from resnet_mlops.serving.classifier_model import ImageScorer, decode_image, resize_and_crop
from resnet_mlops.serving.package import preprocessing_spec
from tests.support.mlflow_server import MlflowServer, free_port, start_mlflow_server
from tests.support.model_file import run_classifiers, write_model_file
from tests.support.project import CIFAR_MIRROR, PARAMS

NAME = "test-classifier"
# The real params.yaml, shrunk: a few dozen iterations of ResNet-20 on the small data.
SMALL = [
    "train.batch_size=32",
    "train.schedule.length=30",
    "train.schedule.milestones=[20]",
    "train.log_every=10",
    "train.checkpoint_every=0",
    "loader.num_threads=1",
]
SERVE_STARTUP_S = 240  # about 15 s on 2 idle cores; far more while other tests compete.


# --- fast: the rule, the URIs and the preprocessing, without a server ----------------------


def test_champion_rule_promotes_only_a_clear_win() -> None:
    first = decide(Standing("1", 10.0, "t"), None, 0.5)
    assert first.promoted and "first model" in first.reason
    champion = Standing("1", 10.0, "t")
    assert decide(Standing("2", 9.4, "t"), champion, 0.5).promoted
    assert not decide(Standing("2", 9.5, "t"), champion, 0.5).promoted  # not by more than 0.5
    assert not decide(Standing("2", 10.0, "t"), champion, 0.0).promoted  # a tie keeps it
    assert not decide(Standing("2", 11.0, "t"), champion, 0.0).promoted
    with pytest.raises(ValueError, match="not comparable"):
        decide(Standing("2", 1.0, "other"), champion, 0.0)


def test_model_uris_and_the_project_root_of_a_dvc_experiment_copy(tmp_path: Path) -> None:
    assert parse_model_uri("models:/a-b@champion") == ModelRef("a-b", alias="champion")
    assert parse_model_uri("models:/a/3") == ModelRef("a", version="3")
    for bad in ("models:/a", "runs:/x/model", "models:/a@b/3"):
        with pytest.raises(RegistryError, match="is not models:/<name>@<alias>"):
            parse_model_uri(bad)
    copy = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12"
    copy.mkdir(parents=True)
    assert project_root(copy) == (tmp_path / "repo").resolve()
    assert project_root(tmp_path) == tmp_path.resolve()
    # Training and evaluation inside the copy log to the project's store, not the copy's.
    assert default_tracking_uri(copy) == f"sqlite:///{(tmp_path / 'repo').resolve()}/mlflow.db"


def test_imagenet_geometry_is_the_training_eval_transform() -> None:
    from resnet_mlops.data.loaders.torch_transforms import crop_at, resize_shorter

    image = np.random.default_rng(0).integers(0, 256, (375, 501, 3), dtype=np.uint8)
    ours = resize_and_crop(image, 256, 224)
    chw = torch.from_numpy(image).permute(2, 0, 1)
    theirs = crop_at(resize_shorter(chw, 256), 0.5, 0.5).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, theirs)
    spec = preprocessing_spec(
        {
            "dataset": "imagenet",
            "input_size": 224,
            "resize": 256,
            "center_crop": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "classes": [f"n{i:08d}" for i in range(1000)],
        }
    )
    scorer = ImageScorer(lambda x: x.mean((2, 3)), spec)
    assert scorer.inputs([image]).shape == (1, 3, 224, 224)
    assert (resize_and_crop(image[:40, :30], 256, 224)).shape == (224, 224, 3)  # small: upscaled


# --- slow: a real server, a real trained model --------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    running = start_mlflow_server(tmp_path_factory.mktemp("registry-server"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def trained(
    server: MlflowServer, small_cifar: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A small ResNet-20 trained and evaluated with the real stages, tracked on the server."""
    from resnet_mlops.stages.evaluate import EvalPaths, run_evaluation
    from resnet_mlops.stages.train import run_training

    tmp = tmp_path_factory.mktemp("trained")
    previous = os.environ["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = server.uri
    try:
        run_training(
            PARAMS, SMALL, small_cifar, tmp, tmp / "train.json", tmp / "history.json", False
        )
        paths = EvalPaths(tmp / "evaluate.json", tmp / "confusion.csv", tmp / "confusion.png")
        run_evaluation(PARAMS, [], tmp / "model.pt", small_cifar, paths)
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    # Nothing left pinned: MLflow's fluent API follows the environment again.
    assert mlflow.get_tracking_uri() == previous
    return {"model": tmp / "model.pt", "evaluation": tmp / "evaluate.json", "dir": tmp}


def cli(*args: str, uri: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    return subprocess.run(
        ["resnet", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def with_error(trained: dict[str, Path], error: float, name: str) -> Path:
    """A copy of the evaluation with another test error: the rule sees only that figure."""
    evaluation = json.loads(trained["evaluation"].read_text())
    path = trained["dir"] / name
    path.write_text(json.dumps({**evaluation, "test_top1_error": error}))
    return path


def other_test_data(small_cifar: Path, folder: Path) -> Path:
    """The small data set with half of its test split: another test data version."""
    shutil.copytree(small_cifar, folder)
    for suffix in ("images", "labels"):
        array = np.load(folder / f"test_{suffix}.npy")
        np.save(folder / f"test_{suffix}.npy", array[::2])
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["outputs"] = describe_outputs(folder)
    manifest["outputs"].pop("manifest.json")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_cifar_inputs_are_the_training_eval_batches(
    trained: dict[str, Path], small_cifar: Path, backend: str
) -> None:
    from resnet_mlops.data.loaders import LoaderParams, LoaderSpec, build_loader

    _, meta = load_model(trained["model"])
    scorer = ImageScorer(None, preprocessing_spec(meta["preprocessing"]))
    params = LoaderParams(backend=backend, num_threads=1)
    loader = build_loader(
        LoaderSpec("cifar10", "test", small_cifar, 25, params=params, device="cpu")
    )
    batch, _ = next(iter(loader))
    images = np.load(small_cifar / "test_images.npy")[:25]
    torch.testing.assert_close(scorer.inputs(list(images)), batch.cpu(), rtol=0, atol=0)
    # A mirror JPEG decodes to the very pixels the prepare stage stored (Pillow both times).
    from resnet_mlops.data.images import decode_rgb

    np.testing.assert_array_equal(decode_image(cat_jpeg()), decode_rgb(cat_jpeg()))


@pytest.fixture(scope="module")
def registered(
    server: MlflowServer, trained: dict[str, Path], small_cifar: Path, tmp_path_factory
) -> dict:
    """Four registrations: first (CLI), worse, better but inside the margin, better on other
    test data (the champion is scored again)."""
    tmp = tmp_path_factory.mktemp("registered")
    first = cli(
        "register",
        "--params",
        str(PARAMS),
        "--model",
        str(trained["model"]),
        "--evaluation",
        str(trained["evaluation"]),
        "--data",
        str(small_cifar),
        "--out",
        str(tmp / "register-1.json"),
        f"register.name={NAME}",
        uri=server.uri,
        cwd=tmp,
    )
    assert first.returncode == 0, first.stderr
    real_error = json.loads(trained["evaluation"].read_text())["test_top1_error"]

    def again(error: float, margin: float, data: Path, number: int):
        paths = RegisterPaths(
            trained["model"],
            with_error(trained, error, f"evaluate-{number}.json"),
            data,
            tmp / f"register-{number}.json",
        )
        return register("cifar10", RegisterParams(name=NAME, margin=margin), paths, server.uri)

    halved = other_test_data(small_cifar, tmp / "halved")
    return {
        "cli": first,
        "real_error": real_error,
        "records": tmp,
        "worse": again(real_error + 5, 0.0, small_cifar, 2),
        "inside_margin": again(real_error - 1, 2.0, small_cifar, 3),
        "other_data": again(0.0, 0.0, halved, 4),
        "halved": halved,
    }


@pytest.mark.slow
def test_champion_rule_both_ways_with_aliases_tags_and_the_decision_logged(
    server: MlflowServer, trained: dict[str, Path], registered: dict, small_cifar: Path
) -> None:
    client = MlflowClient(server.uri)
    assert "v1 is the first model: champion" in registered["cli"].stdout
    first = json.loads((registered["records"] / "register-1.json").read_text())
    assert first["promoted"] and first["version"] == 1 and first["champion_version"] is None

    worse, inside = registered["worse"], registered["inside_margin"]
    assert not worse.promoted and worse.champion.version == "1"
    assert worse.champion.test_error == pytest.approx(registered["real_error"])
    assert not inside.promoted and "by more than 2 points" in inside.reason

    other = registered["other_data"]  # measured on other test data: the champion is re-scored
    assert other.rescored and other.promoted and other.champion.version == "1"
    model, meta = load_model(trained["model"])
    scorer = ImageScorer(model, preprocessing_spec(meta["preprocessing"]))
    expected = top1_error(scorer, registered["halved"], "cifar10", "test")
    assert other.champion.test_error == pytest.approx(expected, abs=2.5)  # eager vs exported
    assert other.champion.test_version == split_version(registered["halved"], "cifar10", "test")
    assert other.challenger.test_version != split_version(small_cifar, "cifar10", "test")

    aliases = client.get_registered_model(NAME).aliases
    assert aliases == {"champion": "4", "challenger": "4"}
    version = client.get_model_version(NAME, "2")
    tags = version.tags
    assert tags["data.version"] == meta["provenance"]["data_version"]
    assert tags["git.commit"] == meta["provenance"]["mlflow.source.git.commit"]
    assert json.loads(tags["params"])["train"]["batch_size"] == 32
    assert float(tags["test_top1_error"]) == pytest.approx(registered["real_error"] + 5)
    assert tags["data.test_version"] == split_version(small_cifar, "cifar10", "test")
    assert "does not beat champion v1" in tags["registry.decision"]

    # The pyfunc went to the training run, with the decision's figures.
    run = client.get_run(meta["provenance"]["mlflow_run_id"])
    assert version.run_id == run.info.run_id and run.info.status == "FINISHED"
    assert run.data.metrics["registry_promoted"] == 1.0  # the last registration won
    assert "registry_champion_test_error" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "registry")}
    assert artifacts == {f"registry/register-{n}.json" for n in (1, 2, 3, 4)}


@pytest.mark.slow
def test_register_registers_the_model_the_training_logged(
    server: MlflowServer, trained: dict[str, Path], registered: dict
) -> None:
    """One logged model per run: four registrations of the trained model.pt are versions of
    the classifier the training logged, and none exported the network again."""
    client = MlflowClient(server.uri)
    _, meta = load_model(trained["model"])
    (logged,) = run_classifiers(client, meta["provenance"]["mlflow_run_id"])
    versions = client.search_model_versions(f"name = '{NAME}'")
    assert len(versions) == 4 and {v.source for v in versions} == {logged.model_uri}


@pytest.mark.slow
def test_register_logs_the_model_of_a_run_that_has_none(
    server: MlflowServer, trained: dict[str, Path], small_cifar: Path, tmp_path: Path
) -> None:
    """A model.pt trained without tracking: register logs its classifier, once, to a run
    of its own."""
    name = "untracked-classifier"
    model_file = write_model_file(tmp_path / "model.pt")
    paths = RegisterPaths(model_file, trained["evaluation"], small_cifar, tmp_path / "r.json")
    decision = register("cifar10", RegisterParams(name=name, margin=0.0), paths, server.uri)
    client = MlflowClient(server.uri)
    version = client.get_model_version(name, decision.challenger.version)
    (logged,) = run_classifiers(client, version.run_id)
    assert version.source == logged.model_uri
    assert client.get_run(version.run_id).info.run_name == "register resnet20"


@pytest.mark.slow
def test_registering_the_same_model_again_reuses_its_version(
    server: MlflowServer, trained: dict[str, Path], small_cifar: Path, tmp_path: Path
) -> None:
    """A register that DVC runs again after a SIGTERM (the first one finished outside DVC)
    finds the version it made: one version, the same decision."""
    name = "registered-twice"

    def register_cli(evaluation: Path, out: str) -> subprocess.CompletedProcess:
        args = ["register", "--params", str(PARAMS), "--model", str(trained["model"])]
        args += ["--evaluation", str(evaluation), "--data", str(small_cifar)]
        args += ["--out", str(tmp_path / out), f"register.name={name}"]
        result = cli(*args, uri=server.uri, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result

    register_cli(trained["evaluation"], "first.json")
    again = register_cli(trained["evaluation"], "again.json")
    assert f"registered already as {name} v1" in again.stderr
    client = MlflowClient(server.uri)
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == ["1"]
    first = json.loads((tmp_path / "first.json").read_text())
    assert json.loads((tmp_path / "again.json").read_text()) == first
    assert first["version"] == 1 and first["promoted"]
    assert client.get_registered_model(name).aliases == {"champion": "1", "challenger": "1"}
    version = client.get_model_version(name, "1")
    assert version.tags["model.sha256"] == hashlib.sha256(trained["model"].read_bytes()).hexdigest()
    # The same file with another evaluation is another version.
    register_cli(with_error(trained, 99.0, "evaluate-twice.json"), "other.json")
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(v.version for v in versions) == ["1", "2"]


@functools.cache
def cat_jpeg() -> bytes:
    """A real CIFAR-10 test image from the mirror."""
    with tarfile.open(CIFAR_MIRROR) as archive:
        for member in archive:
            if member.isfile() and member.name.startswith("test/cat/"):
                return archive.extractfile(member).read()
    raise AssertionError(f"no test/cat/ image in {CIFAR_MIRROR}")


def image_files(folder: Path) -> list[Path]:
    """A real 32x32 CIFAR JPEG, and the same image as a 200x300 PNG."""
    data = cat_jpeg()
    small = folder / "cat.jpg"
    small.write_bytes(data)
    large = folder / "large cat.png"
    Image.open(io.BytesIO(data)).resize((300, 200)).save(large)
    return [small, large]


@pytest.mark.slow
def test_pull_and_predict_from_the_registry_a_folder_and_a_model_file(
    server: MlflowServer, trained: dict[str, Path], registered: dict, tmp_path: Path
) -> None:
    pulled = tmp_path / "champion"
    result = cli(
        "pull", f"models:/{NAME}@champion", "--out", str(pulled), uri=server.uri, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert {"MLmodel", "MODEL_CARD.md", "preprocessing.json", "requirements.txt"} <= {
        p.name for p in pulled.iterdir()
    }
    card = (pulled / "MODEL_CARD.md").read_text()
    _, meta = load_model(trained["model"])
    assert card.startswith(f"# {NAME} version 4")
    for text in (
        meta["provenance"]["data_version"],
        meta["provenance"]["mlflow.source.git.commit"],
        "test_top1_error",
        "batch_size: 32",
        "Aliases: challenger, champion",
    ):
        assert text in card
    spec = json.loads((pulled / "preprocessing.json").read_text())
    assert spec["crop"] == 32 and spec["classes"][3] == "cat"

    images = image_files(tmp_path)
    outputs = {}
    for model in (f"models:/{NAME}@champion", str(pulled), str(trained["model"])):
        result = cli(
            "predict", "--model", model, "--json", *map(str, images), uri=server.uri, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        outputs[model] = json.loads(result.stdout)
    registry, folder, local = outputs.values()
    assert registry == folder
    for ours, theirs in zip(registry, local, strict=True):
        assert len(ours["top"]) == 5
        assert [t["class"] for t in ours["top"]] == [t["class"] for t in theirs["top"]]
        np.testing.assert_allclose(
            [t["probability"] for t in ours["top"]],
            [t["probability"] for t in theirs["top"]],
            rtol=1e-4,
            atol=1e-6,
        )
    text = cli("predict", "--model", str(pulled), str(images[0]), uri=server.uri, cwd=tmp_path)
    lines = text.stdout.splitlines()
    assert lines[0] == str(images[0]) and len(lines) == 6 and lines[1].lstrip().startswith("1.")


CLEAN_LOAD = """
import json, sys
sys.modules["resnet_mlops"] = None  # any import of this project now fails
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = model.predict(pd.DataFrame({"image": [open(p, "rb").read() for p in sys.argv[2:]]}))
print(json.dumps({"columns": list(frame.columns), "rows": frame.to_numpy().tolist()}))
"""


@pytest.mark.slow
def test_pyfunc_loads_in_a_process_that_cannot_import_this_project(
    server: MlflowServer, registered: dict, tmp_path: Path
) -> None:
    images = image_files(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", CLEAN_LOAD, f"models:/{NAME}@champion", *map(str, images)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": server.uri},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["columns"][:3] == ["airplane", "automobile", "bird"]
    rows = np.asarray(output["rows"])
    assert rows.shape == (2, 10) and np.allclose(rows.sum(1), 1.0)


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_with_an_image(
    server: MlflowServer, registered: dict, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion"]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 (the child writes to it)
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True
    )
    log.close()
    try:
        deadline = time.monotonic() + SERVE_STARTUP_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
        image = base64.b64encode(image_files(tmp_path)[1].read_bytes()).decode()
        body = {"dataframe_split": {"columns": ["image"], "data": [[image]]}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            (prediction,) = json.loads(response.read())["predictions"]
        assert len(prediction) == 10 and sum(prediction.values()) == pytest.approx(1.0)
        # The other forms MLflow users send give the same answer, row for row.
        forms = [
            ({"dataframe_records": [{"image": image}]}, "application/json"),
            ({"inputs": {"image": [image, image]}}, "application/json"),
            ({"inputs": [image]}, "application/json"),
            ({"instances": [{"image": image}]}, "application/json"),
            ({"instances": [image]}, "application/json"),
            (f"image\n{image}\n", "text/csv"),
        ]
        for body, content_type in forms:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            other = urllib.request.Request(request.full_url, data, {"Content-Type": content_type})
            with urllib.request.urlopen(other, timeout=120) as response:
                for row in json.loads(response.read())["predictions"]:
                    assert row.keys() == prediction.keys(), body
                    # rel: a batch of 2 sums in another order than a batch of 1 (float32).
                    expected = pytest.approx(list(prediction.values()), rel=1e-4, abs=1e-6)
                    assert list(row.values()) == expected, body
        # A 30000x30000 PNG (0.9 MB) is refused from its header, the row named, not decoded:
        # the answer is that one line, no stack trace.
        from tests.support.images import black_png

        bomb = base64.b64encode(black_png(30_000, 30_000)).decode()
        body = {"dataframe_split": {"columns": ["image"], "data": [[image], [bomb]]}}
        request.data = json.dumps(body).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=120)
        assert refused.value.code == 400
        answer = json.loads(refused.value.read())
        assert answer["message"] == (
            "row 1: image too large: 900000000 pixels, over the cap of 89478485"
        )
        assert "stack_trace" not in answer
        request.data = json.dumps({"inputs": [image, "bm90IGFuIGltYWdl"]}).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=120)
        assert refused.value.code == 400
        assert json.loads(refused.value.read())["message"] == "row 1: not an image"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


@pytest.mark.slow
def test_bad_input_is_a_one_line_error(
    server: MlflowServer, trained: dict[str, Path], registered: dict, tmp_path: Path
) -> None:
    uri = server.uri
    line = one_line_error(
        cli("register", "--params", str(PARAMS), "register.nme=x", uri=uri, cwd=tmp_path)
    )
    assert "unknown key register.nme" in line
    image = image_files(tmp_path)[0]
    line = one_line_error(
        cli("predict", "--model", "models:/nope@champion", str(image), uri=uri, cwd=tmp_path)
    )
    # The known names list every model of this module's server (another test adds its own).
    assert line.startswith(f"error: no registered model 'nope' at {uri} (known: ")
    assert NAME in line.rpartition("(known: ")[2]
    line = one_line_error(cli("pull", f"models:/{NAME}@gold", "--out", "x", uri=uri, cwd=tmp_path))
    assert line == (
        f"error: registered model '{NAME}' has no alias 'gold' (aliases: challenger, champion)"
    )
    assert not (tmp_path / "x").exists()
    line = one_line_error(cli("pull", f"models:/{NAME}/99", "--out", "x", uri=uri, cwd=tmp_path))
    assert line == f"error: registered model '{NAME}' has no version 99"
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(image.read_bytes()[:200])
    line = one_line_error(
        cli(
            "predict",
            "--model",
            str(trained["model"]),
            str(image),
            str(corrupt),
            uri=uri,
            cwd=tmp_path,
        )
    )
    assert line.startswith(f"error: {corrupt}: truncated or corrupt image")
    (tmp_path / "text.png").write_text("not a picture")
    line = one_line_error(
        cli("predict", "--model", str(trained["model"]), "text.png", uri=uri, cwd=tmp_path)
    )
    assert line == "error: text.png: not an image"

    down = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    line = one_line_error(
        cli("pull", f"models:/{NAME}@champion", "--out", "x", uri=down, cwd=tmp_path)
    )
    assert line == f"error: MLflow tracking at {down} is unavailable: connection refused"
    line = one_line_error(
        cli(
            "register",
            "--params",
            str(PARAMS),
            "--model",
            str(trained["model"]),
            "--evaluation",
            str(trained["evaluation"]),
            "--data",
            str(registered["halved"]),
            "--out",
            "r.json",
            uri=down,
            cwd=tmp_path,
        )
    )
    assert line == f"error: MLflow tracking at {down} is unavailable: connection refused"
    assert time.monotonic() - started < 120
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_pull_replaces_only_its_own_folder_and_never_a_file(
    server: MlflowServer, registered: dict, tmp_path: Path
) -> None:
    model, uri = f"models:/{NAME}@champion", server.uri
    # The repro: `mkdir -p X/sub; echo precious > X/important.txt; pull --out X`.
    folder = tmp_path / "x"
    (folder / "sub").mkdir(parents=True)
    (folder / "important.txt").write_text("precious\n")
    line = one_line_error(cli("pull", model, "--out", str(folder), uri=uri, cwd=tmp_path))
    assert line == (
        f"error: {folder}: exists and was not written by `resnet pull`; refusing to replace it "
        "(use --force)"
    )
    assert (folder / "important.txt").read_text() == "precious\n" and (folder / "sub").is_dir()
    assert sorted(p.name for p in folder.iterdir()) == ["important.txt", "sub"]

    params = tmp_path / "params.yaml"
    params.write_text("precious: 1\n")
    for force in ((), ("--force",)):
        line = one_line_error(
            cli("pull", model, "--out", "params.yaml", *force, uri=uri, cwd=tmp_path)
        )
        assert line == (
            "error: params.yaml: exists and is a file, not a folder; refusing to replace it "
            "with the output of `resnet pull`"
        )
        assert params.read_text() == "precious: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    result = cli("pull", model, "--out", str(folder), "--force", uri=uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (folder / "important.txt").exists() and (folder / "MLmodel").is_file()
    marker = json.loads((folder / ".resnet-output.json").read_text())
    assert marker["command"] == "pull" and marker["model"] == f"models:/{NAME}/4"
    assert "MODEL_CARD.md" in marker["entries"]
    # Its own earlier output is replaced without --force; the model still loads from it.
    result = cli("pull", f"models:/{NAME}/1", "--out", str(folder), uri=uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (folder / "MODEL_CARD.md").read_text().startswith(f"# {NAME} version 1")
    assert mlflow.pyfunc.load_model(str(folder)) is not None


@pytest.mark.slow
def test_a_full_or_read_only_disk_is_one_line_naming_the_output_not_mlflow(
    server: MlflowServer, trained: dict[str, Path], registered: dict, tmp_path: Path
) -> None:
    from tests.support.small_disk import fill, remount_read_only, small_tmpfs

    model, uri = f"models:/{NAME}@champion", server.uri
    with small_tmpfs(tmp_path / "disk", 256) as disk:  # the model is about 1 MB
        out = disk / "model"
        line = one_line_error(cli("pull", model, "--out", str(out), uri=uri, cwd=tmp_path))
        assert line == f"error: {out}: no space left on device"
        assert list(disk.iterdir()) == []  # the temporary folder is gone

        fill(disk)
        metrics = disk / "evaluate.json"
        evaluate = ["evaluate", "--params", str(PARAMS), "--model", str(trained["model"])]
        evaluate += ["--data", str(registered["halved"]), "--metrics", str(metrics)]
        line = one_line_error(cli(*evaluate, "--plots", str(disk), uri=uri, cwd=tmp_path))
        assert line == f"error: {metrics}: no space left on device"
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]

        (disk / "filler").unlink()
        remount_read_only(disk)
        line = one_line_error(cli("pull", model, "--out", str(out), uri=uri, cwd=tmp_path))
        assert line == f"error: {out}: read-only file system"
