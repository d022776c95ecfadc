"""The report as one self-contained HTML page (figures embedded) and a Markdown summary."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } .note { color: #555; font-size: 0.92em; }
"""


def pct(value: float | None, std: float | None = None) -> str:
    """``7.51``, ``7.51 ± 0.16``, or ``-`` when there is no value."""
    if value is None:
        return "-"
    return f"{value:.2f} ± {std:.2f}" if std is not None else f"{value:.2f}"


def _paper(row: dict[str, Any]) -> str:
    text = pct(row["paper_error"])
    if row["paper_mean_std"]:
        text += f" ({pct(*row['paper_mean_std'])})"
    return text


def _table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in body
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


TABLE6_HEADER = [
    "model",
    "shortcut",
    "params (M)",
    "runs",
    "train error %",
    "test error %",
    "paper test error %",
    "paper params (M)",
]


def table6_cells(row: dict[str, Any]) -> list[str]:
    """One Table 6 row as text cells (errors as mean ± std where several seeds ran)."""
    return [
        row["model"],
        row["shortcut"],
        "-" if row["params_m"] is None else f"{row['params_m']:.2f}",
        str(row["runs"]),
        pct(row["train_error"], row["train_error_std"]),
        pct(row["test_error"], row["test_error_std"]),
        _paper(row),
        "-" if row["paper_params_m"] is None else f"{row['paper_params_m']:g}",
    ]


IMAGENET_HEADER = [
    "model",
    "shortcut",
    "runs",
    "top-1 %",
    "top-5 %",
    "10-crop top-1 %",
    "10-crop top-5 %",
    "paper 10-crop top-1 %",
    "paper 10-crop top-5 %",
]


def imagenet_cells(row: dict[str, Any]) -> list[str]:
    """One ImageNet row as text cells."""
    return [
        row["model"],
        row["shortcut"],
        str(row["runs"]),
        *(pct(row[c], row[f"{c}_std"]) for c in ("top1", "top5", "top1_10crop", "top5_10crop")),
        pct(row["paper_top1_10crop"]),
        pct(row["paper_top5_10crop"]),
    ]


def embed_png(path: Path, alt: str) -> str:
    """An ``<img>`` holding the PNG itself (a data URI), so the page needs no other file."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def render_html(
    *,
    title: str,
    source: str,
    table6: list[dict[str, Any]],
    imagenet: list[dict[str, Any]],
    figures: dict[str, Path],
    notes: list[str],
) -> str:
    """The whole page: the tables, the figures and what the reader must know about them."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p class='note'>{html.escape(source)}</p>",
    ]
    if any(row["runs"] for row in table6):
        parts += [
            "<h2>CIFAR-10 test error by depth (paper Table 6)</h2>",
            _table(TABLE6_HEADER, [table6_cells(row) for row in table6]),
            "<p class='note'>Errors in percent: mean ± sample std over seeds where several "
            "ran. Training error is the last epoch's, measured on the fly on augmented batches "
            "(as in the paper's Figure 6). The paper's ResNet-110 is the best of 5 runs, with "
            "the mean ± std in brackets. Plain nets appear in the paper only in Figure 6.</p>",
        ]
    if imagenet:
        parts += [
            "<h2>ImageNet validation error</h2>",
            _table(IMAGENET_HEADER, [imagenet_cells(row) for row in imagenet]),
            "<p class='note'>Single crop: 224x224 centre crop of the image resized to 256. "
            "10-crop: the four corners and the centre, and their flips, softmax averaged. The "
            "paper's 10-crop numbers are from its Tables 2 and 3.</p>",
        ]
    for name, path in figures.items():
        parts += [f"<h2>{html.escape(name)}</h2>", embed_png(path, name)]
    if notes:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
        parts += [f"<h2>Notes</h2><ul class='note'>{items}</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(
    title: str, table6: list[dict[str, Any]], imagenet: list[dict[str, Any]], html_path: Path
) -> str:
    """A short summary (the rows that ran) for a Prefect Markdown artifact."""
    lines = [f"# {title}", ""]
    ran = [row for row in table6 if row["runs"]]
    if ran:
        lines += [
            "| " + " | ".join(TABLE6_HEADER) + " |",
            "|" + " --- |" * len(TABLE6_HEADER),
            *("| " + " | ".join(table6_cells(row)) + " |" for row in ran),
            "",
        ]
    if imagenet:
        lines += [
            "| " + " | ".join(IMAGENET_HEADER) + " |",
            "|" + " --- |" * len(IMAGENET_HEADER),
            *("| " + " | ".join(imagenet_cells(row)) + " |" for row in imagenet),
            "",
        ]
    lines.append(f"Full report with Figures 6 and 7: `{html_path}`")
    return "\n".join(lines) + "\n"
