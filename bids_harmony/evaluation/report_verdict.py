"""The "Verdict" section of the group report: summary paragraphs and colour-coded tables.

HTML text only (every value escaped); the decisions are made in
:mod:`bids_harmony.evaluation.verdict`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

from bids_harmony.evaluation.figures import DISPLAY_SCALE
from bids_harmony.evaluation.verdict import ALPHA, COLOURS, Verdict, format_p
from bids_harmony.evaluation.verdict_summary import summary_paragraphs
from bids_harmony.evaluation.wording import METHOD_NAMES, scenario_title

__all__ = ["VERDICT_CSS", "verdict_html"]

VERDICT_CSS = (
    ".verdict td.label{font-weight:bold;text-align:center}"
    ".warning{background:#fff3cd;border:1px solid #e0b000;padding:.6em 1em}"
    ".summary p{margin:.5em 0}"
)
"""Style rules the verdict section and the top warning need."""

_TISSUES = {"WM": "WM", "GM": "GM", "brain": "Whole brain"}

_HOW = (
    "For every metric, tissue and shell, the inter-scanner standard error σₑ (HARP Eq. 2) "
    "after each method is compared with the one without harmonization: <b>better</b> when "
    "it is significantly lower (paired t-test across ROIs, p &lt; {alpha}), <b>worse</b> "
    "when significantly higher, <b>no significant change</b> otherwise (<b>not tested</b>: "
    "fewer than two ROIs). The change is relative to no harmonization; “above scan-rescan” "
    "is how far σₑ is above the larger scan-rescan σₑ of the two sites, the floor "
    "harmonization can hope to reach. Whole-brain rows use the mean over voxels (CSF "
    "excluded) and the test over the ROIs of WM and GM together. Every row is also in "
    "<code>group/verdict.tsv</code>."
)


def _sigma(value: float, metric: str) -> str:
    """σₑ in the metric's display unit, three significant digits."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value * DISPLAY_SCALE.get(metric, (1.0, ''))[0]:.3g}"


def _pct(value: float, signed: bool = True) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.1f} %" if signed else f"{value:.1f} %"


def _rows_html(rows: Sequence[Verdict]) -> str:
    head = ("<tr><th>Metric [unit of σₑ]</th><th>Tissue</th><th>Method</th>"
            "<th>Inter-scanner σₑ: none → method</th><th>Above scan-rescan: none → method</th>"
            "<th>Change vs none</th><th>p (ROIs)</th><th>Verdict</th></tr>")  # fmt: skip
    body = []
    for r in rows:
        unit = DISPLAY_SCALE.get(r.metric, (1.0, ""))[1]
        colour = html.escape(r.colour, quote=True)
        cells = [
            f"{r.metric} [{unit}]" if unit else r.metric,
            _TISSUES.get(r.tissue, r.tissue),
            METHOD_NAMES.get(r.method, r.method),
            f"{_sigma(r.sigma_none, r.metric)} → {_sigma(r.sigma_method, r.metric)}",
            f"{_pct(r.excess_none, False)} → {_pct(r.excess_method, False)}",
        ]
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        tds += f'<td style="background:{colour}">{html.escape(_pct(r.change))}</td>'
        tds += f"<td>{html.escape(format_p(r.pvalue).removeprefix('p '))} ({r.n_rois})</td>"
        tip = html.escape(r.sentence, quote=True)
        tds += f'<td class="label" style="background:{colour}" title="{tip}">'
        tds += f"{html.escape(r.label)}</td>"
        body.append(f"<tr>{tds}</tr>")
    return f"<thead>{head}</thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>"


def verdict_html(
    verdicts: Sequence[Verdict],
    duels: Mapping[tuple[str, ...], Mapping[str, int]] | None = None,
    *,
    alpha: float = ALPHA,
) -> list[str]:
    """HTML parts of the "Verdict" section.

    Parameters
    ----------
    verdicts : sequence of Verdict
        From :func:`bids_harmony.evaluation.verdict.shell_verdicts`.
    duels : mapping, optional
        ``{(scenario, shell[, a, b]): method_duels(...)}``, one per pair of methods.
    alpha : float
        The significance level the rows were judged at (for the explanation).

    Returns
    -------
    list of str
        The heading, the summary paragraphs, one colour-coded table per scenario
        and shell (each row's sentence as the verdict cell's tooltip), and how
        the verdict is made.
    """
    parts = ['<h2 id="verdict">Verdict</h2>']
    if not verdicts:
        parts.append(
            "<p><b>No harmonization method was evaluated</b>: the report compares scan-rescan "
            "with inter-scanner variability without harmonization only.</p>"
        )
        return parts
    paragraphs = summary_paragraphs(verdicts, duels)
    parts.append('<div class="summary">'
                 + "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs) + "</div>")  # fmt: skip
    for key in dict.fromkeys((r.scenario, r.shell) for r in verdicts):
        rows = [r for r in verdicts if (r.scenario, r.shell) == key]
        caption = html.escape(scenario_title(*key))
        parts.append(f'<table class="verdict">\n<caption>{caption}</caption>\n'
                     f"{_rows_html(rows)}\n</table>")  # fmt: skip
    legend = " ".join(
        f'<span style="background:{c};padding:0 .4em">{html.escape(label)}</span>'
        for label, c in COLOURS.items()
    )
    parts.append(f"<p>{legend}</p>")
    parts.append(f"<p>{_HOW.format(alpha=alpha)}</p>")
    return parts
