"""The report document in two formats: markdown (figures linked) and a single self-contained
HTML file (figures embedded as base64 PNG, CSS inline) that can be mailed or archived alone."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from typing import Sequence

from .tables import Table, to_html, to_markdown


@dataclass(frozen=True)
class Figure:
    file_name: str
    title: str
    png: bytes


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1150px;
       padding: 0 16px; color: #222; background: #fff; line-height: 1.4; }
.table-scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; max-width: 100%; }
code { word-break: break-all; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: 6px; }
h2 { font-size: 1.25em; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #f0f3f7; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }  /* "73.4 [64.0–81.0]" on one line; a wide table scrolls instead */
tbody tr:nth-child(even) { background: #fafafa; }
p.note, p.source { color: #555; font-size: 0.85em; }
figure { margin: 16px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
.figure-scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
@media (max-width: 600px) {
  body { margin: 12px auto; padding: 0 10px; }
  h1 { font-size: 1.3em; }
  table { font-size: 0.8em; }
  th, td { padding: 3px 6px; }
  figure { margin: 12px 0; }
  /* a figure shrunk to a phone's width has unreadable legends: show it at its own size, scrolling sideways */
  figure img { max-width: none; width: auto; }
}
"""


def markdown_page(title: str, source: str, tables: Sequence[Table], figures: Sequence[Figure]) -> str:
    parts = [f"# {title}", "", f"Source: `{source}`", ""]
    parts += [to_markdown(table) for table in tables]
    if figures:
        parts += ["## Figures", ""]
        parts += [f"![{figure.title}]({figure.file_name})\n" for figure in figures]
    return "\n".join(parts)


def html_page(title: str, source: str, tables: Sequence[Table], figures: Sequence[Figure]) -> str:
    images = "\n".join(
        f'<figure><div class=figure-scroll><img alt="{html.escape(f.title)}" '
        f'src="data:image/png;base64,{base64.b64encode(f.png).decode()}"></div>'
        f"<figcaption>{html.escape(f.title)}</figcaption></figure>" for f in figures)
    body = "\n".join(to_html(table) for table in tables)
    figures_section = f"<h2>Figures</h2>\n{images}" if figures else ""
    return (f"<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"<p class=source>Source: <code>{html.escape(source)}</code></p>\n{body}\n{figures_section}\n"
            f"</body>\n</html>\n")
