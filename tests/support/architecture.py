"""The package's import graph: what a stage module runs, as files and folders (dvc.yaml deps)."""

from __future__ import annotations

from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "resnet_mlops"


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_closure(graph: grimp.ImportGraph, module: str) -> set[str]:
    """``module`` and every package module it runs on import, parent packages included.

    Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` too, and whatever
    they import; imports inside functions count (they run when the stage does).
    """
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(graph.find_modules_directly_imported_by(current) | _parents(current))
    return {m for m in seen if m == PACKAGE or m.startswith(PACKAGE + ".")}


def module_file(module: str) -> Path:
    path = SRC / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def closure_files(module: str) -> set[Path]:
    """The source files ``module`` runs, relative to the project root."""
    graph = grimp.build_graph(PACKAGE)
    root = SRC.parent
    return {module_file(m).relative_to(root) for m in import_closure(graph, module)}


def as_deps(files: set[Path]) -> list[str]:
    """``files`` as dvc.yaml deps: a folder where all of its ``.py`` files are in, else files."""
    root = SRC.parent
    every = {p.relative_to(root) for p in (SRC / PACKAGE).rglob("*.py")}
    folders = sorted({p.parent for p in every if p.parent != Path("src") / PACKAGE}, key=str)
    chosen: list[Path] = []
    for folder in folders:
        inside = {p for p in every if folder in p.parents}
        if inside <= files and not any(c in folder.parents for c in chosen):
            chosen.append(folder)
    covered = {p for p in every for c in chosen if c in p.parents}
    return [str(p) for p in chosen] + sorted(str(p) for p in files - covered)


def expand_deps(deps: list[str]) -> set[Path]:
    """dvc.yaml deps under src/ as the ``.py`` files they cover."""
    root = SRC.parent
    files: set[Path] = set()
    for dep in deps:
        path = root / dep
        if path.is_dir():
            files |= {p.relative_to(root) for p in path.rglob("*.py")}
        else:
            files.add(Path(dep))
    return files
