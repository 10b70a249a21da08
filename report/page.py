"""Static report pages: one HTML file with inline CSS, its figures as PNG or SVG files beside it (no data URIs).

Each page carries a small script that, once the page has loaded, replaces a figure that failed to load
by a visible note naming its file, and records on ``<body data-figures-loaded="k/n">`` how many of the
page's images loaded, each loaded image's size on ``data-natural-width``/``data-natural-height``; a
headless browser's ``--dump-dom`` shows both (tests/test_report.py).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from emflow.targets import atomic_write_bytes, atomic_write_text

_STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 60em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { padding: 0.2em 0.7em; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f4f4f4; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; } img { max-width: 100%; }
p.verdict { font-size: 1.05em; padding: 0.5em; background: #f4f7fb; border-left: 4px solid #4a7ab7; }
p.missing { color: #b00; font-weight: bold; }
"""

_FIGURE_CHECK = """
window.addEventListener("load", function () {
  var images = document.querySelectorAll("img"), loaded = 0;
  images.forEach(function (image) {
    if (image.complete && image.naturalWidth > 0) {
      loaded += 1;
      image.dataset.naturalWidth = image.naturalWidth;
      image.dataset.naturalHeight = image.naturalHeight;
    } else {
      var note = document.createElement("p");
      note.className = "missing";
      note.textContent = "figure missing: " + image.getAttribute("src");
      image.replaceWith(note);
    }
  });
  document.body.dataset.figuresLoaded = loaded + "/" + images.length;
});
"""


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{html.escape(str(value))}</td>"
    if isinstance(value, int):
        return f'<td class="number">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="number">{value:.4g}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table(header: list[str], rows: list[list]) -> str:
    """An HTML table; ints get thousands separators, floats 4 significant digits, text is escaped."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(file_name: str, caption: str) -> str:
    """An ``<img>`` of an image file (PNG or SVG) beside the page, with a caption."""
    source = html.escape(file_name, quote=True)
    return f'<figure><img src="{source}" alt="{html.escape(caption, quote=True)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def page(title: str, body: str) -> str:
    """A complete HTML document with the report style and the figure check."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style><script>{_FIGURE_CHECK}</script></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def write_report_files(
    directory: str | Path, html_name: str, html_text: str, json_name: str, data: dict, figures: dict[str, bytes | str]
) -> Path:
    """Write figures (bytes, or SVG text), then the JSON, then the page (each atomically), so that a
    page on disk always finds its figures. Returns the page's path."""
    directory = Path(directory)
    for name, image in figures.items():
        atomic_write_bytes(directory / name, image.encode() if isinstance(image, str) else image)
    atomic_write_text(directory / json_name, json.dumps(data, indent=2, sort_keys=True) + "\n")
    atomic_write_text(directory / html_name, html_text)
    return directory / html_name
