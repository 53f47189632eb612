"""Render the evaluation results JSON (the source of truth) as Markdown and self-contained HTML.

The HTML has no external assets: inline CSS and an inline SVG accuracy-vs-latency plot with the
Pareto front marked. ``cli.py report RESULT.json`` re-renders without re-running anything.
"""

from __future__ import annotations

import html
from pathlib import Path

from ..core.metrics import pareto_front
from ..core.records import EngineResult, Evaluation, read_document
from .page import Bullets, Figure, Heading, Page, Para, Table, to_html, to_markdown

def load_results(path: str | Path) -> Evaluation:
    """A results.json, format and every field the report reads checked (:func:`..core.records.read_document`)."""
    return read_document(Evaluation, path)


def _front(doc: Evaluation) -> set[str]:
    """Pareto front of *measured* engines: a simulated engine's latency is not a measurement."""
    ok = [r for r in doc.ok if not r.simulated]
    idx = pareto_front([r.latency_ms.p50 for r in ok], [doc.accuracy(r) for r in ok])
    return {ok[i].config for i in idx}


def _fmt_drop(r: EngineResult) -> str:
    d = r.drop_pp
    return f"{d.points:+.2f} [{d.ci95[0]:+.2f}, {d.ci95[1]:+.2f}]" + (" (within noise)" if d.within_noise else "")


def _latency_batch(doc: Evaluation) -> int:
    """The batch latency was measured at: 1, or the model's fixed batch (the same for every row)."""
    return next((r.latency_ms.batch for r in doc.ok), 1)


def _outputs_section(doc: Evaluation) -> tuple:
    """Every model output of every engine against FP32's (and the user's --metric where one was given)."""
    user = any(r.metric is not None for r in doc.ok)

    def metric_cell(r: EngineResult, first: bool) -> tuple:   # the metric is the engine's, on its first row
        return () if not user else (f"{r.metric:.6g}" if first and r.metric is not None else "",)

    rows = tuple((r.config, o.name, f"{o.sqnr_db:.1f}", f"{o.cosine:.5f}", f"{o.max_abs:.4g}", f"{o.rel_error:.4g}")
                 + metric_cell(r, i == 0) for r in doc.ok for i, o in enumerate(r.outputs))
    if not rows:
        return ()
    return (Heading("Outputs vs FP32"),
            Table(("config", "output", "SQNR dB", "cosine", "max abs error", "relative L2 error")
                  + ((f"metric ({doc.settings.get('metric')})",) if user else ()), rows))


def evaluation_page(doc: Evaluation) -> Page:
    """The evaluation report's content, from the results document (rendered by :mod:`.page`)."""
    front = _front(doc)
    labelled = doc.data.labelled
    header = ("config", "backend", "device") + (("top-1", "top-5") if labelled else ()) + (
        "agreement", "drop pp [95% CI]", "SQNR dB", f"b{_latency_batch(doc)} p50/p90/p99 ms", "img/s", "build s", "MB", "Pareto")
    rows = []
    for r in doc.results:
        if not r.ok:
            reason = (r.reason or "").replace("|", "/")      # keep the table intact
            rows.append((r.config, r.backend, f"failed: {reason[:200]}"))
            continue
        lat = r.latency_ms
        sim = " (simulated)" if r.simulated else ""
        rows.append((f"{r.config}{sim}", r.backend, r.engine.device)
                    + ((f"{r.top1 * 100:.2f}", f"{r.top5 * 100:.2f}") if labelled else ())
                    + (f"{r.agreement * 100:.1f}", _fmt_drop(r), f"{r.sqnr_db:.1f}",
                       f"{lat.p50:.2f}/{lat.p90:.2f}/{lat.p99:.2f}{' simulated' if sim else ''}",
                       f"{r.throughput.images_per_s:.0f} (b{r.throughput.batch}){' simulated' if sim else ''}",
                       f"{r.build_s:.2f}" + (f" (+{r.compile_s:.1f} compile)" if r.compile_s else ""), f"{(r.engine_bytes or 0) / 2**20:.1f}",
                       "*" if r.config in front else ""))
    page = Page("trtquant evaluation",
                f"Evaluation: {doc.model.name} on {doc.data.name} ({doc.data.images} images)")
    page.add(Para((f"Metric: {doc.metric}. Drop = FP32 minus engine, in percentage points, with a 95% paired "
                   "bootstrap interval; an interval containing 0 means the difference is within noise for this "
                   "many images.",)),
             Table(header, tuple(rows)),
             Figure("Accuracy vs latency (Pareto front of measured engines in red; hollow dashed points: simulated "
                    "engines, whose latency is not a measurement)", _svg_plot(doc)),
             *_outputs_section(doc),
             Heading("Engines"),
             Bullets(tuple((f"**{r.config}**: {r.engine.description}",
                            tuple(f"`{c}`" for c in r.trtexec)) for r in doc.ok)))
    for r in doc.ok:
        if r.plan.layers:
            page.add(Heading(f"Per-layer precision: {r.config}"),
                     Table(("layer", "precision", "reason"), tuple((lp.node, lp.precision, lp.reason) for lp in r.plan.layers)))
    env = doc.environment
    rec = doc.recommendation
    page.add(Heading("Environment"),
             Para((", ".join(f"{k} {v}" for k, v in env.items() if k != "argv"),
                   f"command: `{' '.join(env.get('argv', []))}`",
                   f"model fingerprint {doc.model.fingerprint[:16]}, data fingerprint "
                   f"{doc.data.fingerprint[:16]}")),
             Heading("Recommendation"),
             Para((f"Ship **{rec.config}**: {rec.reason}." if rec and rec.config
                   else f"None: {rec.reason if rec else ''}.",)))
    return page


def markdown(doc: Evaluation) -> str:
    return to_markdown(evaluation_page(doc))


def _svg_plot(doc: Evaluation, width: int = 640, height: int = 380) -> str:
    ok = doc.ok
    if not ok:
        return "<p>No successful engines to plot.</p>"
    front = _front(doc)
    xs = [r.latency_ms.p50 for r in ok]
    ys = [doc.accuracy(r) * 100 for r in ok]
    pad = 60
    x0, x1 = min(xs) * 0.9, max(xs) * 1.1 if max(xs) > 0 else 1
    y0, y1 = min(ys) - 1, max(ys) + 1

    def px(x):
        return pad + (x - x0) / (x1 - x0 or 1) * (width - 2 * pad)

    def py(y):
        return height - pad - (y - y0) / (y1 - y0 or 1) * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="accuracy versus latency">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#333"/>',
             f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle" font-size="13">batch-{_latency_batch(doc)} latency p50 (ms)</text>',
             f'<text x="18" y="{height / 2}" text-anchor="middle" font-size="13" transform="rotate(-90 18 {height / 2})">'
             f'{html.escape(doc.metric)} (%)</text>']
    for t in range(5):
        xv = x0 + (x1 - x0) * t / 4
        yv = y0 + (y1 - y0) * t / 4
        parts.append(f'<text x="{px(xv)}" y="{height - pad + 16}" text-anchor="middle" font-size="11">{xv:.2f}</text>')
        parts.append(f'<text x="{pad - 6}" y="{py(yv) + 4}" text-anchor="end" font-size="11">{yv:.1f}</text>')
    fr = sorted((r for r in ok if r.config in front), key=lambda r: r.latency_ms.p50)
    if len(fr) > 1:
        pts = " ".join(f"{px(r.latency_ms.p50):.1f},{py(doc.accuracy(r) * 100):.1f}" for r in fr)
        parts.append(f'<polyline class="pareto" points="{pts}" fill="none" stroke="#d62728" stroke-width="2" stroke-dasharray="6 3"/>')
    placed: list[tuple[float, float]] = []
    for r, x, y in zip(ok, xs, ys):
        on = r.config in front
        ly = py(y) - 8
        while any(abs(px(x) - qx) < 60 and abs(ly - qy) < 12 for qx, qy in placed):
            ly += 14                                   # stack labels of coinciding points
        placed.append((px(x), ly))
        sim = r.simulated
        fill = "none" if sim else ("#d62728" if on else "#1f77b4")
        label = r.config + (" (simulated latency)" if sim else "")
        dash = ' stroke-dasharray="2 2"' if sim else ""
        parts.append(f'<circle class="engine{" front" if on else ""}{" simulated" if sim else ""}" cx="{px(x):.1f}" '
                     f'cy="{py(y):.1f}" r="6" fill="{fill}" stroke="#1f77b4" stroke-width="2"{dash}>'
                     f'<title>{html.escape(label)}: {y:.2f}% at {x:.2f} ms</title></circle>')
        parts.append(f'<text x="{px(x) + 8:.1f}" y="{ly:.1f}" font-size="12">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def html_report(doc: Evaluation) -> str:
    return to_html(evaluation_page(doc))

