"""Render a sweep document: target, sensitivity ranking (SVG bars), the search path, validation."""

from __future__ import annotations

import html
from pathlib import Path

from ..core.fileio import atomic_write_text
from .render import _md_table_to_html


def sweep_markdown(doc: dict) -> str:
    s, v = doc["search"], doc["validation"]
    lines = [f"# Mixed-precision sweep: {doc['model']['name']} on {doc['data']['name']} ({doc['data']['images']} images)", "",
             f"Target `{doc['target']['text']}`: {doc['target']['meaning']}. Metric: {doc['metric']} "
             f"(FP32 {doc['fp32_metric'] * 100:.2f}%). {doc['calibration']}.", ""]
    lines += [f"- {n}" for n in doc["notes"]]
    verdict = ("met" if s["met"] else "NOT met") + (" (partial: time budget)" if s["partial"] else "")
    lines += ["", f"Result: target {verdict} with **{len(s['fp16_layers'])} of {doc['layers']}** quantizable layers in FP16, "
                  f"{s['evaluations']} full-model evaluations. Simulated {doc['metric']}: {s['simulated_metric'] * 100:.2f}%.", ""]
    if v.get("status") == "ok":
        lines.append(f"Validation on {v['backend']} ({'simulated' if v['simulated'] else 'real engine'}): "
                     f"{v['metric'] * 100:.2f}% -> target {'met' if v['meets_target'] else 'NOT met'}. {v.get('note', '')}")
    else:
        lines.append(f"Validation on {v['backend']} failed: {v.get('reason', '')}")
    lines += ["", "## Search path (the accuracy/cost front)", "", "| step | action | FP16 layers | metric % | target |", "|---|---|---|---|---|"]
    for i, p in enumerate(s["path"]):
        lines.append(f"| {i} | {p['action']} | {len(p['fp16'])} | {p['metric'] * 100:.2f} | {'met' if p['met'] else ''} |")
    lines += ["", "## Sensitivity ranking", "", "| rank | layer | regain when FP16 (SQNR dB) | alone INT8 (SQNR dB) | plan |", "|---|---|---|---|---|"]
    fp16 = set(s["fp16_layers"])
    for i, row in enumerate(doc["sensitivity"]):
        r, a = row["regain_sqnr_db"], row["alone_int8_sqnr_db"]
        lines.append(f"| {i + 1} | {row['layer']} | {'' if r is None else f'{r:+.2f}'} | {'' if a is None else f'{a:.1f}'} | "
                     f"{'FP16' if row['layer'] in fp16 else 'INT8'} |")
    lines += ["", "## Build it", ""] + [f"- `{c}`" for c in doc["trtexec"]]
    t = doc["timings"]
    lines += ["", f"Time: sensitivity {t['sensitivity_s']:.1f} s, search {t['search_s']:.1f} s, total {t['total_s']:.1f} s."]
    return "\n".join(lines) + "\n"


def sensitivity_svg(doc: dict, width: int = 720, bar: int = 9) -> str:
    rows = [r for r in doc["sensitivity"] if r["regain_sqnr_db"] is not None][:40]
    if not rows:
        return "<p>No ranking.</p>"
    fp16 = set(doc["search"]["fp16_layers"])
    top = max(max(r["regain_sqnr_db"] for r in rows), 1e-6)
    left, height = 330, len(rows) * (bar + 3) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="sensitivity ranking">']
    for i, r in enumerate(rows):
        y = 10 + i * (bar + 3)
        w = max(0.0, r["regain_sqnr_db"]) / top * (width - left - 60)
        color = "#d62728" if r["layer"] in fp16 else "#1f77b4"
        parts.append(f'<text x="{left - 6}" y="{y + bar - 1}" text-anchor="end" font-size="10">{html.escape(r["layer"][-48:])}</text>')
        parts.append(f'<rect class="bar" x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar - 1}" font-size="10">{r["regain_sqnr_db"]:+.2f} dB</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def sweep_report_texts(doc: dict) -> dict[str, str]:
    """``{"sweep.md": ..., "sweep.html": ...}``: the reports, for the caller to write with its other outputs."""
    md = sweep_markdown(doc)
    body = _md_table_to_html(md)
    plot = ("<h2>Sensitivity: SQNR regained when the layer alone stays FP16 (red: FP16 in the plan)</h2>\n"
            + sensitivity_svg(doc))
    body = body.replace("<h2>Sensitivity ranking</h2>", plot + "\n<h2>Sensitivity ranking</h2>", 1)
    css = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:3px 7px;font-size:12px}th{background:#f3f3f3}code{background:#f6f6f6}")
    return {"sweep.md": md,
            "sweep.html": f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                          f"<title>trtquant sweep</title><style>{css}</style></head><body>\n{body}\n</body></html>\n"}


def write_sweep_reports(doc: dict, out: str | Path) -> None:
    out = Path(out)
    for name, text in sweep_report_texts(doc).items():
        atomic_write_text(out / name, text)
