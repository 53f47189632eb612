"""One report page, two renderings: Markdown and self-contained HTML (one Jinja2 skeleton, one stylesheet).

A report builder (evaluation, sweep) turns its results document into a :class:`Page` of blocks; it
never writes Markdown or HTML itself. Text may carry two inline marks, ``**bold**`` and ```code```,
which Markdown keeps and HTML turns into ``<b>``/``<code>`` after escaping everything else. Figures
(inline SVG made by the report builders) appear in the HTML only.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

import jinja2
from markupsafe import Markup


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Para:
    lines: tuple[str, ...]              # consecutive lines of one paragraph


@dataclass(frozen=True)
class Bullets:
    items: tuple[tuple[str, tuple[str, ...]], ...]     # (item, its sub-items)


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Figure:
    caption: str
    svg: str                            # trusted markup from our own plot functions


@dataclass
class Page:
    title: str                          # <title>
    heading: str                        # the first heading
    blocks: list = field(default_factory=list)

    def add(self, *blocks) -> "Page":
        self.blocks.extend(blocks)
        return self


CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
       "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f3f3}"
       "code{background:#f6f6f6;padding:1px 4px}.cmd{margin-left:2em;font-size:12px}")

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ page.title }}</title><style>{{ css }}</style></head><body>
<h1>{{ page.heading }}</h1>
{% for b in page.blocks -%}
{% if b.__class__.__name__ == "Heading" %}<h2>{{ b.text }}</h2>
{% elif b.__class__.__name__ == "Para" %}{% for line in b.lines %}<p>{{ line | inline }}</p>
{% endfor %}{% elif b.__class__.__name__ == "Bullets" %}{% for item, subs in b.items %}<p>{{ item | inline }}</p>
{% for s in subs %}<div class="cmd">{{ s | inline }}</div>
{% endfor %}{% endfor %}{% elif b.__class__.__name__ == "Table" %}<table>
<tr>{% for c in b.header %}<th>{{ c | inline }}</th>{% endfor %}</tr>
{% for row in b.rows %}<tr>{% for c in row %}<td>{{ c | inline }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% elif b.__class__.__name__ == "Figure" %}<h2>{{ b.caption }}</h2>
{{ b.svg | safe }}
{% endif %}{% endfor %}</body></html>
"""


def _inline(text: str) -> Markup:
    t = html.escape(str(text))
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return Markup(re.sub(r"`(.+?)`", r"<code>\1</code>", t))


_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ENV.filters["inline"] = _inline
_PAGE = _ENV.from_string(_TEMPLATE)


def to_html(page: Page) -> str:
    return _PAGE.render(page=page, css=Markup(CSS))


def _md_cells(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def to_markdown(page: Page) -> str:
    parts = [f"# {page.heading}"]
    for b in page.blocks:
        if isinstance(b, (Bullets, Para)) and not (b.items if isinstance(b, Bullets) else b.lines):
            continue
        if isinstance(b, Heading):
            parts.append(f"## {b.text}")
        elif isinstance(b, Para):
            parts.append("\n".join(b.lines))
        elif isinstance(b, Bullets):
            parts.append("\n".join(f"- {item}" + "".join(f"\n  - {s}" for s in subs) for item, subs in b.items))
        elif isinstance(b, Table):
            parts.append("\n".join([_md_cells(b.header), "|" + "---|" * len(b.header)] + [_md_cells(r) for r in b.rows]))
    return "\n\n".join(parts) + "\n"
