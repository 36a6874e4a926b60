"""The HTML pieces of ``recbench report``: escaping, tables and sections. Every piece of text
goes through html.escape; nothing here links or scripts anything."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cell:
    """A table cell with a CSS class (e.g. ``flag``) and a hover title (e.g. a flag's reason)."""

    text: Any
    cls: str = ""
    title: str = ""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _td(c: Any, numeric: bool) -> str:
    cls = ["n"] if numeric else []
    title = ""
    if isinstance(c, Cell):
        cls += [c.cls] if c.cls else []
        title = f' title="{esc(c.title)}"' if c.title else ""
        c = c.text
    attr = f' class="{esc(" ".join(cls))}"' if cls else ""
    return f"<td{attr}{title}>{esc(c)}</td>"


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = (),
          groups: Sequence[tuple[str, int]] = ()) -> str:
    """An HTML table; every cell escaped; columns in ``numeric`` right-aligned. ``groups``:
    an optional first header row of (label, columns spanned), e.g. one machine's columns."""
    numeric = set(numeric)
    out = ["<table><thead>"]
    if groups:
        out.append("<tr>" + "".join(f'<th colspan="{n}">{esc(g)}</th>' if n > 1
                                    else f"<th>{esc(g)}</th>" for g, n in groups) + "</tr>")
    out += ["<tr>", *(f"<th>{esc(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(_td(c, i in numeric) for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>\n{body}\n</section>\n'


def fmt(v: float | None) -> str:
    """A table number: ``24,060``, ``12.3``, ``0.0421``; ``-`` for none."""
    return "-" if v is None else f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"
