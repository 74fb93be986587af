"""Numbers as the renderers print them: one place, so the terminal and Markdown agree."""

from __future__ import annotations

import math

from flag_bench.leaderboard.model import INT_COSTS, CurvePoint, Stat


def num(v: float) -> str:
    """3 decimals; integers above 1000 (an MSE on raw counts), 3 significant digits above a million."""
    if not math.isfinite(v):
        return "n/a" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if abs(v) >= 1e6:
        return f"{v:.3g}"
    text = f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3f}"
    # a mean that rounds to zero is 0.000, not a sign that means nothing
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def compact(s: Stat, detail: str = "std") -> str:
    """'0.596±0.034' (detail std), '0.596±0.034 [0.565,0.618]' (ci) or '0.596' (mean)."""
    if not math.isfinite(s.mean):
        return num(s.mean)
    txt = num(s.mean)
    if detail in ("std", "ci") and math.isfinite(s.std):
        txt += f"±{num(s.std)}"
    if detail == "ci" and math.isfinite(s.ci_low):
        txt += f" [{num(s.ci_low)},{num(s.ci_high)}]"
    return txt


def full(s: Stat) -> str:
    """Markdown's cell: '0.596 ± 0.034 [0.565, 0.618]'."""
    if not math.isfinite(s.mean):
        return "n/a"
    txt = f"{s.mean:.3f}" + (f" ± {s.std:.3f}" if math.isfinite(s.std) else "")
    if math.isfinite(s.ci_low):
        txt += f" [{s.ci_low:.3f}, {s.ci_high:.3f}]"
    return txt


def cost_value(column: str, v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    if column in INT_COSTS or column.endswith("_mb"):
        return str(int(round(v)))  # parameters are counts; MB to the unit is precision enough
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"  # seconds: 3 significant digits
    return f"{v:.3f}" if v >= 0.0005 else "<0.001"  # below a millisecond is noise of the clock


def cost(column: str, s: Stat, with_std: bool = False) -> str:
    txt = cost_value(column, s.mean)
    if with_std and math.isfinite(s.mean) and math.isfinite(s.std):
        spread = cost_value(column, s.std)
        # a spread that rounds away (the same parameter count in every fold) says nothing
        txt += "" if spread in ("0", "<0.001") else f" ± {spread}"
    return txt


def point(p: CurvePoint) -> str:
    """A curve point: '0.596 [0.565,0.618]', the mean alone where one value has no CI."""
    if not math.isfinite(p.mean) or not math.isfinite(p.ci_low):
        return num(p.mean)
    return f"{num(p.mean)} [{num(p.ci_low)},{num(p.ci_high)}]"
