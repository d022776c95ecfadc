"""The README stays a short front page and every link in it and in ``docs/`` leads somewhere.

The README keeps the results, the set-up and one paragraph per way of using the project; the
manual lives in ``docs/``. A moved section must not leave a dead link or anchor behind, and the
README's install and test commands must stay the ones ``.ci/run`` runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.project import REPO

README = REPO / "README.md"
MAX_README_LINES = 200

# Pages other branches are writing while this one is merged; the links to them are deliberate.
# Remove each entry once its page is in the repository (then its links are checked like any).
NOT_YET_WRITTEN: set[Path] = set()

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); a target may carry a "title" after a space.
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


def markdown_pages() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text outside fenced code blocks and code spans, where a link is a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """The heading ids GitHub gives a page: lower case, punctuation dropped, spaces to hyphens,
    a repeated id numbered from -1."""
    ids: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in ids:
            n += 1
            candidate = f"{slug}-{n}"
        ids.add(candidate)
    return ids


def relative_links(page: Path) -> list[str]:
    targets = LINK.findall(prose(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.IGNORECASE)]


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; the manual goes in docs/"


@pytest.mark.parametrize("page", markdown_pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if resolved in NOT_YET_WRITTEN:
            continue
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading #{fragment} in {resolved.name}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_link_checker_sees_a_dead_link(tmp_path: Path) -> None:
    # The checks above pass vacuously if the patterns stop matching; pin them on a known page.
    page = tmp_path / "page.md"
    page.write_text(
        "# The pipeline: `dvc repro`\n\n## params.yaml and overrides\n\n"
        "[a](missing.md) ![b](img/x.png) [c](#the-pipeline-dvc-repro) [d](https://e.org)\n"
        "`[not](a-link.md)`\n\n```\n[not](a-link-either.md)\n```\n",
        encoding="utf-8",
    )
    assert relative_links(page) == ["missing.md", "img/x.png", "#the-pipeline-dvc-repro"]
    assert anchors(page) == {"the-pipeline-dvc-repro", "paramsyaml-and-overrides"}


def test_readme_commands_are_the_ones_ci_runs() -> None:
    # .ci/run installs "exactly as the README says" and runs the README's test command.
    blocks = re.findall(r"^```bash\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    commands = [b.strip() for b in blocks]
    install = 'python3.11 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'
    assert install in commands
    assert "dvc repro" in commands
    assert "pytest" in commands
    ci_lines = {line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()}
    for step in install.split(" && "):
        assert step in ci_lines, f".ci/run does not run the README's install step {step!r}"
    assert "pytest" in ci_lines
