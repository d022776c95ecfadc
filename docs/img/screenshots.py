"""Regenerate the UI screenshots in docs/img/ from real runs (not part of the tests or CI).

    . .venv/bin/activate && python docs/img/screenshots.py

It starts a real ``mlflow server`` (SQLite in a temporary folder), trains ResNet-20 and
plain-20 for a few iterations on a small CIFAR-10 subset of the mirror with ``resnet train``,
and photographs the run list, the compare view and one run's page with headless Chromium
(Debian's ``chromium``) over the DevTools protocol. Then it starts a real Prefect server, runs
the ``resnet-pipeline`` flow (``python -m pipelines.pipeline``) on a copy of the project with
the same small data, and photographs the flow run's page. About five minutes on two cores.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import websocket  # websocket-client, a dependency of the project's environment
import yaml

from resnet_mlops.params.base import apply_overrides, read_yaml

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "img"
MIRROR = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
WIDTH, HEIGHT = 1400, 900
TRAIN = [
    "train.schedule.length=4",
    "train.schedule.milestones=[]",
    "train.batch_size=32",
    "train.log_every=1",
    "train.checkpoint_every=0",
    "loader.num_threads=1",
]
# The MLflow 3 UI opens its assistant panel on first load and shows the GenAI sections
# first; close the one and pick "Model training" so the pictures show the runs.
MLFLOW_TIDY = """(async () => {
  for (const b of document.querySelectorAll('button[aria-label=Close]')) b.click();
  for (const e of document.querySelectorAll('*'))
    if (e.children.length === 0 && e.innerText === 'Model training') e.click();
  await new Promise(r => setTimeout(r, 1500));
})()"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout_s: float = 240) -> None:
    """Wait until ``url`` answers 200 (a server's health check)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"error: the server for {url} exited (its log is in the temp folder)")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(1)
    sys.exit(f"error: {url} did not answer in {timeout_s:.0f} s")


@contextlib.contextmanager
def server(command: list[str], health: str, log: Path, env: dict[str, str]) -> Iterator[None]:
    """A server subprocess (its own process group) for the duration of the block."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        wait_for(health, process)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    print("+", " ".join(command), flush=True)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {command[0]} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout + result.stderr


def cifar_subset(root: Path, train: int = 50, test: int = 10) -> Path:
    """The first images of each class from the mirror, as class folders."""
    wanted = {"train": train, "test": test}
    counts: dict[tuple[str, str], int] = {}
    with tarfile.open(MIRROR) as archive:
        for member in archive:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and parts[0] in wanted:
                key = (parts[0], parts[1])
                if counts.get(key, 0) < wanted[parts[0]]:
                    counts[key] = counts.get(key, 0) + 1
                    target = root / member.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.extractfile(member).read())
    return root


class Browser:
    """Headless Chromium driven over the DevTools protocol (no extra packages)."""

    def __init__(self, profile: Path) -> None:
        port = free_port()
        self.process = subprocess.Popen(
            [
                *("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"),
                *(f"--remote-debugging-port={port}", f"--user-data-dir={profile}"),
                *(f"--window-size={WIDTH},{HEIGHT}", "about:blank"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as response:
                    tabs = json.load(response)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        page = next(t for t in tabs if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"])
        self.next_id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def shoot(self, url: str, out: Path, script: str = "", settle_s: float = 8) -> None:
        """Open ``url``, let the single-page app render, run ``script``, save a PNG."""
        self.call("Page.navigate", url=url)
        time.sleep(settle_s)
        if script:
            self.call("Runtime.evaluate", expression=script, awaitPromise=True)
            time.sleep(2)
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        out.write_bytes(png)
        print(f"{out}: {len(png) // 1024} KB", flush=True)

    def close(self) -> None:
        self.ws.close()
        self.process.terminate()
        self.process.wait(15)


def mlflow_runs(uri: str) -> list[dict]:
    request = urllib.request.Request(
        f"{uri}/api/2.0/mlflow/runs/search",
        data=json.dumps({"experiment_ids": ["1"], "order_by": ["start_time ASC"]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)["runs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-prefect", action="store_true")
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        sys.exit("error: chromium not found (Debian: apt-get install -y chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="resnet-screenshots-"))
    print(f"working in {tmp}", flush=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    base_env["DVC_NO_ANALYTICS"] = "1"
    params = str(REPO / "params.yaml")
    tree = cifar_subset(tmp / "tree")
    run(["resnet", "prepare", "--params", params, "--out", str(tmp / "prepared"),
         "--report", str(tmp / "prepare.json"), "--download-dir", str(tmp / "dl"),
         f"prepare.cifar10.source={tree}"], tmp, base_env)  # fmt: skip
    run(["resnet", "preprocess", "--params", params, "--prepared", str(tmp / "prepared"),
         "--out", str(tmp / "data"), "--report", str(tmp / "preprocess.json"),
         "preprocess.cifar10.val_size=100"], tmp, base_env)  # fmt: skip

    browser = Browser(tmp / "chromium")
    try:
        mport = free_port()
        muri = f"http://127.0.0.1:{mport}"
        mlflow_cmd = [
            *(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"),
            *("--port", str(mport), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}"),
            *("--artifacts-destination", str(tmp / "mlflow-artifacts")),
        ]
        mlflow_env = {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with server(mlflow_cmd, f"{muri}/health", tmp / "mlflow.log", mlflow_env):
            env = {**base_env, "MLFLOW_TRACKING_URI": muri}
            # From the checkout, so the runs record its git commit.
            for model in ("resnet20", "plain20"):
                out = tmp / f"train-{model}"
                run(["resnet", "train", "--params", params, "--data", str(tmp / "data"),
                     "--out", str(out), "--metrics", str(out / "train.json"),
                     "--history", str(out / "history.json"), f"train.model={model}", *TRAIN],
                    REPO, env)  # fmt: skip
            runs = mlflow_runs(muri)
            ids = [r["info"]["run_id"] for r in runs]
            browser.shoot(f"{muri}/#/experiments/1/runs", OUT / "mlflow-runs.png", MLFLOW_TIDY)
            browser.shoot(
                f'{muri}/#/compare-runs?runs={json.dumps(ids)}&experiments=["1"]',
                OUT / "mlflow-compare.png",
                MLFLOW_TIDY,
            )
            browser.shoot(f"{muri}/#/experiments/1/runs/{ids[0]}", OUT / "mlflow-run.png",
                          MLFLOW_TIDY)  # fmt: skip
            if not args.skip_prefect:
                shoot_prefect(tmp, tree, env, browser)
    finally:
        browser.close()
    print(f"done; the runs and logs are in {tmp}")


def make_workspace(root: Path, tree: Path) -> Path:
    """A git repository with the project's pipeline and flows, params shrunk to ``tree``."""
    files = ["dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore",
             ".dvc/plots/offline.html", "prefect.yaml"]  # fmt: skip
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, root / name)
    for package in ("src/resnet_mlops", "pipelines"):
        shutil.copytree(REPO / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    overrides = [
        f"prepare.cifar10.source={tree}",
        "prepare.workers=1",
        "preprocess.cifar10.val_size=100",
        "preprocess.workers=1",
        "evaluate.batch_size=100",
        "register.name=cifar10-screenshots",
        *TRAIN,
    ]
    params = apply_overrides(read_yaml(REPO / "params.yaml"), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def shoot_prefect(tmp: Path, tree: Path, env: dict[str, str], browser: Browser) -> None:
    """A real Prefect server, one ``resnet-pipeline`` flow run, its page."""
    workspace = make_workspace(tmp / "workspace", tree)
    git_env = {**env, "GIT_AUTHOR_NAME": "docs", "GIT_AUTHOR_EMAIL": "docs@example.com",
               "GIT_COMMITTER_NAME": "docs", "GIT_COMMITTER_EMAIL": "docs@example.com"}  # fmt: skip
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "p"]):
        run(command, workspace, git_env)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    prefect_env = {
        **git_env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
    with server(command, f"{api}/health", tmp / "prefect.log", prefect_env):
        run([sys.executable, "-m", "pipelines.pipeline", "--model", "resnet20", "--retries", "0"],
            workspace, {**prefect_env, "PYTHONPATH": str(workspace)})  # fmt: skip
        request = urllib.request.Request(
            f"{api}/flow_runs/filter",
            data=json.dumps({"sort": "START_TIME_DESC", "limit": 1}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as response:
            (flow_run,) = json.load(response)
        browser.shoot(
            f"http://127.0.0.1:{port}/runs/flow-run/{flow_run['id']}",
            OUT / "prefect-flow-run.png",
            settle_s=12,
        )


if __name__ == "__main__":
    main()
