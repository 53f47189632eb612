"""Render a debug document: the first jump, SQNR along the graph (SVG), the per-tensor table, the suggested plan."""

from __future__ import annotations

import html
import math

from ..core.records import Debug, TensorDivergence
from .page import Bullets, Figure, Heading, Page, Para, Table, to_html


def fmt_db(value: float | None) -> str:
    """A SQNR cell: one decimal, ``exact`` for no error, empty where the view does not apply."""
    if value is None:
        return ""
    if value == math.inf:
        return "exact"
    return "-inf" if value == -math.inf else f"{value:.1f}"


def _jump_line(doc: Debug) -> str:
    j = doc.first_jump
    if j is None:
        return (f"**No jump**: no node adds error below {doc.jump_db:g} dB while dominating the error it inherits; "
                "the added column ranks the layers by the error they add.")
    row = next(r for r in doc.tensors if r.tensor == j.tensor)
    return (f"**First jump: `{j.node}`** ({row.op}, tensor `{j.tensor}`): it adds {fmt_db(j.added_sqnr_db)} dB "
            f"by itself (weight alone {fmt_db(row.weight_sqnr_db) or 'n/a'} dB, activation alone "
            f"{fmt_db(row.activation_sqnr_db) or 'n/a'} dB: the {j.cause} quantization) while it inherits "
            f"{fmt_db(j.inherited_sqnr_db)} dB; its output is at {fmt_db(j.sqnr_db)} dB SQNR."
            + (f" Keeping `{j.layer}` FP16 removes these quantizers." if j.layer and j.layer != j.node else ""))


def debug_page(doc: Debug) -> Page:
    """The debug report's content, from the debug record (rendered by :mod:`.page`)."""
    s = doc.suggestion
    worst = {n: i + 1 for i, n in enumerate(s.fp16_layers)}
    jump = doc.first_jump.tensor if doc.first_jump else None
    rows = []
    for i, r in enumerate(doc.tensors):
        mark = "first jump" if r.tensor == jump else ""
        if r.layer in worst and r.node == r.layer:
            mark = (mark + ", " if mark else "") + f"worst {worst[r.layer]}"
        rows.append((str(i), r.tensor, r.op, fmt_db(r.sqnr_db), f"{r.cosine:.5f}", fmt_db(r.added_sqnr_db),
                     fmt_db(r.inherited_sqnr_db), fmt_db(r.weight_sqnr_db), fmt_db(r.activation_sqnr_db),
                     "; ".join(r.quantizers), mark))
    t = doc.timings
    page = Page("trtquant debug", f"Divergence from FP32: {doc.model.name} ({doc.plan.name}) on {doc.data.name} "
                                  f"({doc.data.images} images)")
    counts = ", ".join(f"{v} {k}" for k, v in doc.plan.counts.items() if v)
    page.add(Para((f"Plan `{doc.plan.name}` ({counts}, the rest {doc.plan.default}); {doc.calibration}; "
                   f"{doc.batches} batch(es) of {doc.batch_size}. Each tensor of the quantized model against "
                   f"FP32's: **SQNR** (dB, the error accumulated up to it), **added** (the node alone quantized, "
                   f"on FP32's inputs), **inherited** (the node unquantized, on the quantized model's inputs), "
                   f"**weight**/**activation** (the node with only that quantizer); `exact` = no error.",
                   f"Jump criterion: {doc.criterion}.")),
             Para((_jump_line(doc),)),
             Bullets(tuple((n, ()) for n in doc.notes)),
             Figure("SQNR along the graph (blue: accumulated; orange: added by the node alone; dashed: the "
                    f"{doc.jump_db:g} dB jump threshold; red: the first jump)", sqnr_svg(doc)),
             Heading("Suggested plan"),
             Para((f"Keeping the {len(s.fp16_layers)} layer(s) that add the most error in FP16 takes the first "
                   f"output from {fmt_db(s.output_sqnr_db)} dB to {fmt_db(s.suggested_output_sqnr_db)} dB SQNR "
                   f"(simulated, FP16 computed in FP32). The plan is `{s.plan_file}` "
                   f"(`cli.py build --precision {doc.files.get('plan.json', s.plan_file)}`).",)),
             Bullets(((f"TensorRT <= 10 (implicit INT8): `--precisionConstraints=obey --layerPrecisions={s.layer_precisions}`"
                       if s.layer_precisions else "No layer to keep in FP16.", ()),)
                     + tuple((f"{i + 1}. `{n}`", ()) for i, n in enumerate(s.fp16_layers))),
             Heading("Every tensor, in graph order"),
             Table(("#", "tensor", "op", "SQNR dB", "cosine", "added dB", "inherited dB", "weight dB",
                    "activation dB", "own quantizers", ""), tuple(rows)),
             Para((f"Time: ranges {t.get('ranges_s', 0):.1f} s, analysis {t.get('analysis_s', 0):.1f} s, "
                   f"total {t.get('total_s', 0):.1f} s.",)))
    return page


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def sqnr_svg(doc: Debug, width: int = 960, height: int = 360) -> str:
    rows: list[TensorDivergence] = list(doc.tensors)
    if not rows:
        return "<p>No tensors.</p>"
    values = _finite([r.sqnr_db for r in rows] + [r.added_sqnr_db for r in rows if r.quantizers] + [doc.jump_db])
    top = min(max(values) + 5, 120.0)
    bottom = min(0.0, min(values) - 2)
    left, right, pad = 56, 16, 36

    def px(i: float) -> float:
        return left + (i / max(1, len(rows) - 1)) * (width - left - right)

    def py(v: float) -> float:
        v = top if v == math.inf else bottom if v == -math.inf else min(max(v, bottom), top)
        return height - pad - (v - bottom) / (top - bottom or 1) * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="SQNR along the graph">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{left}" y1="{height - pad}" x2="{width - right}" y2="{height - pad}" stroke="#333"/>',
             f'<line x1="{left}" y1="{pad}" x2="{left}" y2="{height - pad}" stroke="#333"/>',
             f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle" font-size="12">tensor, in graph order</text>',
             f'<text x="14" y="{height / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 14 {height / 2})">'
             'SQNR vs FP32 (dB)</text>']
    for k in range(6):
        v = bottom + (top - bottom) * k / 5
        parts.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.0f}</text>')
    parts.append(f'<line class="threshold" x1="{left}" y1="{py(doc.jump_db):.1f}" x2="{width - right}" '
                 f'y2="{py(doc.jump_db):.1f}" stroke="#999" stroke-dasharray="5 4"/>')
    if doc.first_jump is not None:
        i = next(k for k, r in enumerate(rows) if r.tensor == doc.first_jump.tensor)
        parts.append(f'<line class="jump" x1="{px(i):.1f}" y1="{pad}" x2="{px(i):.1f}" y2="{height - pad}" '
                     f'stroke="#d62728" stroke-width="2"/>')
        parts.append(f'<text x="{px(i) + 4:.1f}" y="{pad - 6}" font-size="11" fill="#d62728">'
                     f'{html.escape(doc.first_jump.node[-60:])}</text>')
    pts = " ".join(f"{px(i):.1f},{py(r.sqnr_db):.1f}" for i, r in enumerate(rows))
    parts.append(f'<polyline class="accumulated" points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>')
    for i, r in enumerate(rows):
        if r.quantizers and math.isfinite(r.added_sqnr_db):
            parts.append(f'<circle class="added" cx="{px(i):.1f}" cy="{py(r.added_sqnr_db):.1f}" r="3" fill="#ff7f0e">'
                         f'<title>{html.escape(r.tensor)}: added {fmt_db(r.added_sqnr_db)} dB, accumulated '
                         f'{fmt_db(r.sqnr_db)} dB</title></circle>')
    parts.append("</svg>")
    return "\n".join(parts)


def debug_html(doc: Debug) -> str:
    return to_html(debug_page(doc))
