"""``dvc plots show`` and ``dvc plots diff`` write a page that works with no internet: the chart
libraries are inside it (.dvc/plots/offline.html), not loaded from a CDN."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tests.support.project import PARAMS, REPO, copy_project, run

# Anything the browser would fetch from elsewhere: a script, stylesheet, image or frame source,
# or a CSS import, pointing at a URL with a scheme or a protocol-relative one.
EXTERNAL = re.compile(
    r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?(?:[a-z][a-z0-9+.-]*:|//)"""
    r"""|@import\s+(?:url\()?["']?(?:https?:|//)""",
    re.IGNORECASE,
)


def history(epochs: int, offset: float) -> str:
    rows = [
        {"epoch": e, "train_error": 50.0 / e + offset, "val_error": 60.0 / e + offset}
        for e in range(1, epochs + 1)
    ]
    return json.dumps(rows)


def test_plots_page_references_nothing_outside_itself(tmp_path: Path) -> None:
    repo = copy_project(tmp_path / "repo")
    shutil.copyfile(PARAMS, repo / "params.yaml")  # dvc.yaml interpolates it
    run("git", "init", "-q", cwd=repo)
    (repo / "plots").mkdir()
    (repo / "plots" / "train_history.json").write_text(history(3, 0.0))
    (repo / "plots" / "confusion.csv").write_text("actual,predicted\ncat,cat\ncat,dog\ndog,dog\n")
    shutil.copyfile(REPO / "plots" / "confusion.png", repo / "plots" / "confusion.png")
    run("git", "add", "-A", cwd=repo)
    run("git", "commit", "-qm", "plots", cwd=repo)
    (repo / "plots" / "train_history.json").write_text(history(4, 1.0))

    for command, out in ((("show",), "show"), (("diff", "HEAD"), "diff")):
        run("dvc", "plots", *command, "-o", out, cwd=repo)
        page = (repo / out / "index.html").read_text()
        assert not EXTERNAL.search(page), EXTERNAL.search(page).group(0)
        assert "cdn.jsdelivr" not in page
        # The libraries are inline and each chart calls them: vega-embed defines vegaEmbed.
        assert page.count("vegaEmbed(") >= 2  # the history chart and the confusion matrix
        assert "vega-embed" in page and "vegaLite" in page
        body = page.split("<body>", 1)[1]  # the charts; the head is the inlined libraries
        images = re.findall(r"<img[^>]*src\s*=\s*\"([^\"]+)\"", body)
        assert images, "the confusion PNG is on the page"
        for source in images:  # beside the page, or inside it
            assert source.startswith("data:") or (repo / out / source).is_file(), source


def test_template_is_what_build_sh_says() -> None:
    """The page DVC reads carries its placeholder and the versions build.sh inlines."""
    page = (REPO / ".dvc" / "plots" / "offline.html").read_text()
    build = (REPO / ".dvc" / "plots" / "build.sh").read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page
    for version in re.findall(r"vega(?:-lite|-embed)?@[\d.]+", build):
        assert version in page
    config = (REPO / ".dvc" / "config").read_text()
    assert re.search(r"html_template\s*=\s*plots/offline.html", config)
