"""Render a sweep document: target, sensitivity ranking (SVG bars), the search path, validation."""

from __future__ import annotations

import html

from ..core.records import Sweep
from ..core.targets import FIDELITY_KINDS, Target
from .page import Bullets, Figure, Heading, Page, Para, Table, to_html, to_markdown


def sweep_target(doc: Sweep) -> Target:
    return Target(doc.target.kind, doc.target.value, doc.target.text)


def sweep_page(doc: Sweep) -> Page:
    """The sweep report's content, from the sweep record (rendered by :mod:`.page`)."""
    s, v = doc.search, doc.validation
    target = sweep_target(doc)
    fmt = target.format
    page = Page("trtquant sweep", f"Mixed-precision sweep: {doc.model.name} on {doc.data.name} "
                                  f"({doc.data.images} images)")
    verdict = ("met" if s.met else "NOT met") + (" (partial: time budget)" if s.partial else "")
    if v.status == "ok":
        validation = (f"Validation on {v.backend} ({'simulated' if v.simulated else 'real engine'}): "
                      f"{fmt(v.metric)} -> target {'met' if v.meets_target else 'NOT met'}. {v.note or ''}")
    else:
        validation = f"Validation on {v.backend} failed: {v.reason}"
    fp16 = set(s.fp16_layers)
    ranking = []
    for i, row in enumerate(doc.sensitivity):
        r, a = row.regain_sqnr_db, row.alone_int8_sqnr_db
        ranking.append((str(i + 1), row.layer, "" if r is None else f"{r:+.2f}", "" if a is None else f"{a:.1f}",
                        "FP16" if row.layer in fp16 else "INT8"))
    t = doc.timings
    page.add(Para((f"Target `{doc.target.text}`: {doc.target.meaning}. Metric: {doc.metric} "
                   f"(FP32 {fmt(doc.fp32_metric) if doc.fp32_metric is not None else 'exact'}). "
                   f"{doc.calibration}.",)),
             Bullets(tuple((n, ()) for n in doc.notes)),
             Para((f"Result: target {verdict} with **{len(s.fp16_layers)} of {doc.layers}** quantizable layers "
                   f"in FP16, {s.evaluations} full-model evaluations. Simulated {doc.metric}: "
                   f"{fmt(s.simulated_metric)}.",)),
             Para((validation,)),
             Heading("Search path (the accuracy/cost front)"),
             Table(("step", "action", "FP16 layers", "metric" if target.kind in FIDELITY_KINDS else "metric %", "target"),
                   tuple((str(i), p.action, str(len(p.fp16)), fmt(p.metric).rstrip("%"), "met" if p.met else "")
                         for i, p in enumerate(s.path))),
             Figure("Sensitivity: SQNR regained when the layer alone stays FP16 (red: FP16 in the plan)",
                    sensitivity_svg(doc)),
             Heading("Sensitivity ranking"),
             Table(("rank", "layer", "regain when FP16 (SQNR dB)", "alone INT8 (SQNR dB)", "plan"), tuple(ranking)),
             Heading("Build it"),
             Bullets(tuple((f"`{c}`", ()) for c in doc.trtexec)),
             Para((f"Time: sensitivity {t['sensitivity_s']:.1f} s, search {t['search_s']:.1f} s, "
                   f"total {t['total_s']:.1f} s.",)))
    return page


def sweep_markdown(doc: Sweep) -> str:
    return to_markdown(sweep_page(doc))


def sensitivity_svg(doc: Sweep, width: int = 720, bar: int = 9) -> str:
    rows = [r for r in doc.sensitivity if r.regain_sqnr_db is not None][:40]
    if not rows:
        return "<p>No ranking.</p>"
    fp16 = set(doc.search.fp16_layers)
    top = max(max(r.regain_sqnr_db for r in rows), 1e-6)
    left, height = 330, len(rows) * (bar + 3) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="sensitivity ranking">']
    for i, r in enumerate(rows):
        y = 10 + i * (bar + 3)
        w = max(0.0, r.regain_sqnr_db) / top * (width - left - 60)
        color = "#d62728" if r.layer in fp16 else "#1f77b4"
        parts.append(f'<text x="{left - 6}" y="{y + bar - 1}" text-anchor="end" font-size="10">{html.escape(r.layer[-48:])}</text>')
        parts.append(f'<rect class="bar" x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 1}" font-size="10">{r.regain_sqnr_db:+.2f} dB</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def sweep_report_texts(doc: Sweep) -> dict[str, str]:
    """``{"sweep.md": ..., "sweep.html": ...}``: the reports, for the caller to write with its other outputs."""
    page = sweep_page(doc)
    return {"sweep.md": to_markdown(page), "sweep.html": to_html(page)}
