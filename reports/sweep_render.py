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
        c = row.fp16_cost_ms
        ranking.append((str(i + 1), row.layer, "" if r is None else f"{r:+.2f}", "" if a is None else f"{a:.1f}",
                        "" if c is None else f"{c * 1e3:+.2f}", "FP16" if row.layer in fp16 else "INT8"))
    t = doc.timings
    page.add(Para((f"Target `{doc.target.text}`: {doc.target.meaning}. Metric: {doc.metric} "
                   f"(FP32 {fmt(doc.fp32_metric) if doc.fp32_metric is not None else 'exact'}). "
                   f"{doc.calibration}.",)),
             Bullets(tuple((n, ()) for n in doc.notes)),
             Para((f"Result: target {verdict} with **{len(s.fp16_layers)} of {doc.layers}** quantizable layers "
                   f"in FP16, {s.evaluations} full-model evaluations. Simulated {doc.metric}: "
                   f"{fmt(s.simulated_metric)}.",)),
             Para((validation,)),
             Heading("Search path"),
             Table(("step", "action", "FP16 layers", "metric" if target.kind in FIDELITY_KINDS else "metric %",
                    "est. latency ms", "target"),
                   tuple((str(i), p.action, str(len(p.fp16)), fmt(p.metric).rstrip("%"), _ms(p.latency_ms),
                          "met" if p.met else "") for i, p in enumerate(s.path))),
             *latency_blocks(doc),
             Figure("Sensitivity: SQNR regained when the layer alone stays FP16 (red: FP16 in the plan)",
                    sensitivity_svg(doc)),
             Heading("Sensitivity ranking"),
             Table(("rank", "layer", "regain when FP16 (SQNR dB)", "alone INT8 (SQNR dB)",
                    "FP16 cost (est. µs)", "plan"), tuple(ranking)),
             Heading("Build it"),
             Bullets(tuple((f"`{c}`", ()) for c in doc.trtexec)),
             Para(("Time: " + ", ".join(f"{label} {t[k]:.1f} s" for k, label in TIME_PHASES if k in t) + ".",)))
    return page


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v:.4f}"


def latency_blocks(doc: Sweep) -> tuple:
    """The latency estimate, in words, and the Pareto front of accuracy vs estimated latency (figure + table)."""
    lat = doc.latency
    if lat is None:
        return ()
    fmt = sweep_target(doc).format
    objective = ("the fastest plan by estimated latency" if doc.objective == "latency" else
                 "the fewest FP16 layers")
    return (Heading("Accuracy vs estimated latency"),
            Para((f"Objective: {objective}. Latencies are **estimated, not measured**: {lat.model} "
                  f"(GPU: {lat.gpu_source}). All INT8 {lat.all_int8_ms:.4f} ms, all FP16 {lat.all_fp16_ms:.4f} ms, "
                  f"the plan {lat.plan_ms:.4f} ms.",)),
            Figure("Pareto front of the evaluated plans: metric vs estimated latency (grey: every plan evaluated; "
                   "blue: the front; red: the chosen plan)", pareto_svg(doc)),
            Table(("plan", "FP16 layers", "metric", "est. latency ms", ""),
                  tuple((f.label, str(f.fp16_layers), fmt(f.metric), _ms(f.latency_ms), "chosen" if f.chosen else "")
                        for f in doc.front)))


def pareto_svg(doc: Sweep, width: int = 640, height: int = 320) -> str:
    pts = [(p.latency_ms, p.metric) for p in doc.search.path if p.latency_ms is not None]
    front = [(f.latency_ms, f.metric, f.chosen) for f in doc.front]
    every = pts + [(x, y) for x, y, _ in front]
    if not every:
        return "<p>No plans.</p>"
    left, right, top, bottom = 70, 20, 15, 45
    xs, ys = [x for x, _ in every], [y for _, y in every]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1e-6), (y1 if y1 > y0 else y0 + 1e-6)
    px = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)            # noqa: E731
    py = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    fmt = sweep_target(doc).format
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="accuracy vs estimated latency">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#444"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>',
             f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle" font-size="11">'
             f'estimated latency, ms ({html.escape(doc.latency.gpu)}, batch {doc.latency.batch}; not measured)</text>',
             f'<text x="{left - 6}" y="{py(y0) + 4:.1f}" text-anchor="end" font-size="10">{html.escape(fmt(y0))}</text>',
             f'<text x="{left - 6}" y="{py(y1) + 4:.1f}" text-anchor="end" font-size="10">{html.escape(fmt(y1))}</text>',
             f'<text x="{px(x0):.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">{x0:.4f}</text>',
             f'<text x="{px(x1):.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">{x1:.4f}</text>']
    for x, y in pts:
        parts.append(f'<circle class="plan" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="#bbb"/>')
    if len(front) > 1:
        line = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _ in front)
        parts.append(f'<polyline points="{line}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    for x, y, chosen in front:
        parts.append(f'<circle class="{"chosen" if chosen else "front"}" cx="{px(x):.1f}" cy="{py(y):.1f}" '
                     f'r="{6 if chosen else 4}" fill="{"#d62728" if chosen else "#1f77b4"}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def sweep_markdown(doc: Sweep) -> str:
    return to_markdown(sweep_page(doc))


# the phases of ``Sweep.timings`` in the order they run (older files have only some of them)
TIME_PHASES = (("load_images_s", "loading images"), ("calibration_s", "calibration"), ("fp32_pass_s", "FP32 pass"),
               ("sensitivity_s", "sensitivity"), ("latency_model_s", "latency model"), ("search_s", "search"),
               ("validation_s", "validation"), ("total_s", "total"))


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
