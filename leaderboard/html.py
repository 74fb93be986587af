"""The leaderboard as one self-contained HTML file: inline CSS, figures inlined as base64 PNG, a
small inline script that sorts any leaderboard table by a clicked column. Nothing is fetched at
view time.

Sorting: clicking a header sorts by it (again: the other way). ``#sort=COLUMN:asc|desc`` in the
URL sorts every table with that column on load, so a link can carry a view. Each sorted table
records its state in ``data-sort-col`` / ``data-sort-dir`` and on the header's ``aria-sort``.
"""

from __future__ import annotations

import html
import math
from typing import Sequence

from flag_bench.leaderboard import fmt
from flag_bench.leaderboard.content import Content, fmt_p, stat_key
from flag_bench.leaderboard.figures import data_uri
from flag_bench.leaderboard.calibration import cal_name
from flag_bench.leaderboard.model import (CAL_LEGEND, LEGEND, TINY_WARNING, Row, bound_values, calibration_note,
                                          contended_legend, contended_mark, hardware_legend, role_label, role_legend,
                                          short_name, transform_tag)
from flag_bench.leaderboard.validity import summary_line
from flag_bench.leaderboard.notes import text_lines
from flag_bench.leaderboard.stats import CI_NOTE, MDE_NOTE, MIN_PAIRS, WILCOXON_NOTE, units
from flag_bench.leaderboard.terminal import direction_text

SECTIONS = (("protocol", "Protocol and coverage"), ("leaderboard", "Leaderboard"),
            ("curves", "Gene-Dimension-Curse curves"), ("significance", "Which differences are real"),
            ("scaled", "Control-scaled scores"), ("maps", "Spatial maps and per-gene views"), ("notes", "Notes"))

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
header{background:#1d2a44;color:#fff;padding:14px 28px}header h1{margin:0;font-size:21px}
header p{margin:4px 0 0;color:#c9d3e6}nav{padding:6px 28px;background:#e8edf5;font-size:13px}
nav a{margin-right:14px;color:#1d3d7a;text-decoration:none}main{padding:4px 28px 40px;max-width:1500px}
section{margin-top:22px}h2{border-bottom:2px solid #d5dbe6;padding-bottom:3px;font-size:18px}
h3{font-size:15px;margin:16px 0 6px}table{border-collapse:collapse;margin:6px 0 10px;background:#fff;font-size:12.5px}
th,td{border:1px solid #d5dbe6;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef2f8;cursor:pointer;user-select:none}td.l,th.l{text-align:left}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tr.tiny td{background:#fff8e1}.flag{background:#fdecea;border-left:4px solid #c62828;padding:6px 10px;margin:6px 0}
.warn{background:#fff8e1;border-left:4px solid #f9a825;padding:6px 10px;margin:6px 0}
.muted{color:#5b6478;font-size:12.5px}figure{margin:10px 0 18px;background:#fff;border:1px solid #d5dbe6;padding:8px;display:inline-block}
figure img{max-width:100%;height:auto;display:block}figcaption{font-size:12.5px;color:#40485a;max-width:1100px;margin-top:4px}
pre{background:#f0f2f6;padding:8px;font-size:12px;overflow-x:auto}.ci{color:#5b6478;font-size:11.5px}
td.best{font-weight:600}dl.card{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:4px 0 8px}
dl.card dt{font-weight:600}dl.card dd{margin:0}div.wide{overflow-x:auto;max-width:100%}
"""

JS = """
(function(){
function key(td){var v=parseFloat(td.getAttribute('data-v'));return isNaN(v)?null:v;}
function sortTable(t,col,dir){
  var head=t.tHead.rows[0].cells,idx=-1;
  for(var i=0;i<head.length;i++){if(head[i].getAttribute('data-col')===col){idx=i;}head[i].removeAttribute('aria-sort');}
  if(idx<0){return false;}
  var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){
    var x=key(a.cells[idx]),y=key(b.cells[idx]);
    if(x===null&&y===null){return a.cells[idx].textContent.localeCompare(b.cells[idx].textContent)*dir;}
    if(x===null){return 1;}if(y===null){return -1;}return (x-y)*dir;});
  rows.forEach(function(r){body.appendChild(r);});
  head[idx].setAttribute('aria-sort',dir>0?'ascending':'descending');
  t.setAttribute('data-sort-col',col);t.setAttribute('data-sort-dir',dir>0?'asc':'desc');
  return true;}
var tables=document.querySelectorAll('table.sortable');
tables.forEach(function(t){
  Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th){
    th.addEventListener('click',function(){
      var col=th.getAttribute('data-col'),cur=t.getAttribute('data-sort-col')===col?t.getAttribute('data-sort-dir'):null;
      sortTable(t,col,cur==='asc'?-1:1);});});});
var m=/sort=([^:&]+):(asc|desc)/.exec(decodeURIComponent(location.hash||''));
if(m){tables.forEach(function(t){sortTable(t,m[1],m[2]==='asc'?1:-1);});}
document.body.setAttribute('data-js','ready');
})();
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _num_attr(v: float) -> str:
    return repr(float(v)) if isinstance(v, (int, float)) and math.isfinite(v) else ""


def _stat_cell(lb, r: Row, c: str) -> str:
    s = r.stats[c]
    if c in lb.costs:
        mark = contended_mark(lb, r, c)
        busy = f' class="contended" title="{r.contended} cell(s) timed on a busy machine"' if mark else ""
        return f'<td data-v="{_num_attr(s.mean)}"{busy}>{esc(fmt.cost(c, s, with_std=True) + mark)}</td>'
    if not math.isfinite(s.mean):
        return '<td data-v="">n/a</td>'
    txt = fmt.num(s.mean) + (f" ± {fmt.num(s.std)}" if math.isfinite(s.std) else "")
    ci = f'<br><span class="ci">[{fmt.num(s.ci_low)}, {fmt.num(s.ci_high)}]</span>' if math.isfinite(s.ci_low) else ""
    return f'<td data-v="{_num_attr(s.mean)}">{esc(txt)}{ci}</td>'


def _arrow(lb, c: str) -> str:
    return {True: " ↑", False: " ↓"}.get(lb.higher_is_better.get(c), "")


def leaderboard_section(c: Content) -> list[str]:
    lb = c.lb
    out = [f'<p class="muted">{esc(LEGEND)}. Click a column header to sort; '
           'a link ending in <code>#sort=mse:asc</code> opens sorted.</p>']
    for board in lb.datasets:
        for g in board.genes:
            rows = [r for r in board.rows if r.n_genes == g]
            if not rows:
                continue
            target = f", target {transform_tag(board.transforms)}" if board.transforms else ""
            out.append(f"<h3>{esc(board.dataset)}, G = {g}{esc(target)}</h3>")
            head = ['<th class="l" data-col="method">method</th>', '<th data-col="cells">cells</th>']
            head += [f'<th data-col="{esc(col)}" title="{esc(lb.info[col].description)}">'
                     f'{esc(lb.header(col, board))}{_arrow(lb, col)}</th>' for col in lb.shown]
            out.append(f'<div class="wide"><table class="sortable board" data-dataset="{esc(board.dataset)}" '
                       f'data-genes="{g}"><thead><tr>{"".join(head)}</tr></thead><tbody>')
            for r in rows:
                cells = [f'<td class="l" data-v="">{esc(role_label(r))}{" †" if r.tiny else ""}</td>',
                         f'<td data-v="{r.cells}">{r.cells}</td>', *(_stat_cell(lb, r, col) for col in lb.shown)]
                out.append(f'<tr class="{"tiny" if r.tiny else ""}">{"".join(cells)}</tr>')
            out.append("</tbody></table></div>")
            out += _calibration_table(lb, board, g, rows)
        if any(r.tiny for r in board.rows):
            out.append(f'<p class="warn">† {esc(TINY_WARNING)}</p>')
        cls = "warn" if board.verdicts else "muted"
        out.append(f'<p class="{cls} validity" data-dataset="{esc(board.dataset)}">'
                   f'{esc(summary_line(board.verdicts, short_name))}</p>')
    out.append("<h3>Columns</h3><ul class=\"muted\">")
    for col in lb.shown:
        info = lb.info[col]
        out.append(f"<li><b>{esc(lb.header(col))}</b> (<code>{esc(col)}</code>, {esc(direction_text(info))}): "
                   f"{esc(info.description)}</li>")
    for info in lb.hidden:
        out.append(f"<li>({esc(info.header)}) (<code>{esc(info.name)}</code>, not shown): {esc(info.description)}</li>")
    if lb.calibrated:
        out.append(f"<li><b>&lt;score&gt; cal</b>: {esc(CAL_LEGEND)}</li>")
    out += [f"<li><b>{esc(mark)}</b>: {esc(text)}</li>" for mark, text in (*role_legend(lb), *hardware_legend(lb),
                                                                                    *contended_legend(lb))]
    out.append("</ul>")
    return out


def _calibration_table(lb, board, g: int, rows) -> list[str]:
    if not lb.calibrated:
        return []
    head = ['<th class="l" data-col="method">method</th>', '<th data-col="cells">cells</th>']
    head += [f'<th data-col="{esc(cal_name(m))}">{esc(short_name(cal_name(m)))} ↑</th>' for m in lb.calibrated]
    out = [f'<p class="muted">{esc(board.dataset)}, G = {g}: calibrated scores (0 = best image-free null of the '
           'fold, 1 = noise ceiling)</p>',
           f'<div class="wide"><table class="sortable calibrated" data-dataset="{esc(board.dataset)}" '
           f'data-genes="{g}"><thead><tr>{"".join(head)}</tr></thead><tbody>']
    for r in rows:
        cells = [f'<td class="l" data-v="">{esc(role_label(r))}</td>', f'<td data-v="{r.cells}">{r.cells}</td>',
                 *(_stat_cell(lb, r, cal_name(m)) for m in lb.calibrated)]
        out.append(f"<tr>{''.join(cells)}</tr>")
    out.append("</tbody><tfoot>")
    for what, attr in (("null (raw, best image-free control)", "null"), ("ceiling (raw, split-half)", "ceiling")):
        tds = "".join(f'<td class="{attr}">{fmt.num(v)}</td>' for v in bound_values(board, g, lb.calibrated, attr))
        out.append(f'<tr><td class="l">{esc(what)}</td><td></td>{tds}</tr>')
    out.append("</tfoot></table></div>")
    note = calibration_note(board)
    out += [f'<p class="muted">{esc(note)}</p>'] if note else []
    return out


def protocol_section(c: Content) -> list[str]:
    out = []
    for card in c.cards:
        out.append(f"<h3>{esc(card.dataset)}</h3><dl class=\"card\">")
        out += [f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in card.fields]
        out.append("</dl>")
        out += [f'<div class="flag">⚠ {esc(f)}</div>' for f in card.flags]
        if not card.flags:
            out.append('<p class="muted">No test-informed panel, no pretraining overlap recorded.</p>')
    notes = c.lb.notes
    out.append(f"<h3>Coverage</h3><p>{sum(x.finished for x in c.coverage)} finished, "
               f"{sum(x.failed for x in c.coverage)} failed, {notes.n_missing} planned but missing"
               + (f", {notes.running} running now" if notes.running else "") + ".</p>")
    out.append('<table class="sortable coverage"><thead><tr><th class="l" data-col="dataset">dataset</th>'
               '<th data-col="G">G</th><th class="l" data-col="method">method</th><th data-col="finished">finished</th>'
               '<th data-col="failed">failed</th></tr></thead><tbody>')
    for x in c.coverage:
        out.append(f'<tr><td class="l" data-v="">{esc(x.dataset)}</td><td data-v="{x.n_genes}">{x.n_genes}</td>'
                   f'<td class="l" data-v="">{esc(x.label)}</td><td data-v="{x.finished}">{x.finished}</td>'
                   f'<td data-v="{x.failed}">{x.failed}</td></tr>')
    out.append("</tbody></table>")
    for g in notes.missing:
        out.append(f"<p class=\"muted\">missing {esc(g.label)}: {g.count} (e.g. {esc('; '.join(g.examples))})</p>")
    return out


def significance_section(c: Content) -> list[str]:
    out = [f'<p class="muted">Per dataset × G × metric, over test folds: the unit is one test slide (one held-out '
           "patient for a patient split); each configuration's seeds are averaged within a unit before any test, and "
           f"seeds never count as units. {esc(WILCOXON_NOTE)}. {esc(CI_NOTE)}. {esc(MDE_NOTE)}. A test needs at least "
           f"{MIN_PAIRS} units with a non-zero difference (with n units an exact two-sided signed-rank test's "
           "smallest p is 2/2<sup>n</sup>, 0.0625 at n = 5: it cannot reach p &lt; 0.05), and Friedman needs 3 or more "
           "configurations and that many complete units; otherwise this section says \"too few\" and prints no "
           "p-value. Groups: configurations by mean, best first; those sharing a letter are not told apart "
           "(no pair among them at Holm p &lt; 0.05).</p>"]
    figs = {f.key: f for f in c.figures if f.section == "significance"}
    by_metric: dict[str, list] = {}
    for t in c.tests:
        by_metric.setdefault(t.metric, []).append(t)
    for metric, tests in by_metric.items():
        name = c.lb.header(metric) if metric in c.lb.info else metric
        out.append(f'<h3 id="sig-{esc(metric)}">{esc(name)} (<code>{esc(metric)}</code>)</h3>')
        for t in tests:
            out += _metric_tests_html(t)
            out += [_figure_html(figs[k]) for k in (stat_key("wilcoxon", t), stat_key("cd", t)) if k in figs]
    return out


def _metric_tests_html(t) -> list[str]:
    """One dataset x G of one metric: groups, the MDE, every pair, Friedman, the variance split."""
    out = [f"<h4>{esc(t.dataset)}, G = {t.n_genes}: {esc(t.over)}</h4>"]
    if not t.pairs:
        return out + ['<p class="too-few">One configuration only: nothing to compare.</p>']
    g = t.groups
    letters = ", ".join(f"{esc(lab)} ({g.letters[lab]})" for lab in g.order)
    out.append(f'<p class="groups">Groups: {letters}.' + (f" {esc(g.note)}." if g.note else "") + "</p>")
    out.append(f'<p class="mde">{esc(t.mde_line())}.</p>')
    out.append('<table class="pairs"><thead><tr><th class="l">a</th><th class="l">b</th><th>n</th>'
               '<th>mean a − b (better &gt; 0)</th><th>95% CI</th><th>MDE</th><th>min p</th><th>W</th><th>null</th>'
               '<th>p</th><th>Holm p</th></tr></thead><tbody>')
    for p in t.pairs:
        if p.enough:
            tail = (f"<td>{p.statistic:g}</td><td>{esc(p.null)}</td><td>{fmt_p(p.p)}</td>"
                    f"<td>{fmt_p(p.p_holm)}</td>")
        else:
            tail = f'<td colspan="4" class="l too-few">too few {esc(t.unit)}s (n={p.n_used})</td>'
        out.append(f'<tr><td class="l">{esc(p.a)}</td><td class="l">{esc(p.b)}</td><td>{p.n}</td>'
                   f"<td>{fmt.num(p.mean_diff)}</td><td>[{fmt.num(p.ci_low)}, {fmt.num(p.ci_high)}]</td>"
                   f"<td>{fmt.num(p.mde)}</td><td>{fmt_p(p.min_p)}</td>{tail}</tr>")
    out.append("</tbody></table>")
    fr = t.friedman
    if fr.ran:
        out.append(f"<p>Friedman χ² = {fr.statistic:.3g}, p = {fmt_p(fr.p)} over {esc(units(fr.n_units, t.unit))} "
                   f"(complete, seeds averaged); Nemenyi critical difference {fr.cd:.2f} in mean rank.</p>")
    else:
        out.append(f'<p class="too-few">Friedman: {esc(fr.reason)}.</p>')
    if fr.excluded:
        out.append(f'<p class="muted">Left out of Friedman (no value in any cell): {esc(", ".join(fr.excluded))}.</p>')
    return out + _variance_html(t)


def _variance_html(t) -> list[str]:
    out = ['<table class="variance"><thead><tr><th class="l">configuration</th><th>units</th><th>seeds</th>'
           f"<th>sd between {esc(t.unit)}s</th><th>seed sd</th><th>seed share of variance</th></tr></thead><tbody>"]
    for v in t.variance:
        out.append(f'<tr><td class="l">{esc(v.label)}</td><td>{v.n_units}</td><td>{v.n_seeds}</td>'
                   f"<td>{fmt.num(v.sd_between)}</td><td>{fmt.num(v.sd_seed)}</td><td>{fmt.num(v.seed_share)}</td></tr>")
    return out + ["</tbody></table>"]


def scaled_section(c: Content) -> list[str]:
    out = ['<p class="muted">Open Problems style: per dataset × G × metric, the negative control '
           '(<code>mean</code>) maps to 0 and the best positive control present (<code>ridge</code>, '
           '<code>ridge-smooth</code>, <code>knn</code>, or a card with role positive_control) to 1; for '
           "lower-is-better metrics the same scale makes better higher. Means over test folds (seeds averaged within each) are scaled; "
           "raw values are in the leaderboard. GSC, SSC, SSC spot and Lee L are not scaled here: the mean "
           "control scores 0 on them only by convention; their calibrated tables (0 = the best image-free "
           "null control of each fold, 1 = the noise ceiling) sit under each leaderboard table.</p>"]
    by: dict[tuple, list] = {}
    for s in c.scaled:
        by.setdefault((s.dataset, s.n_genes), []).append(s)
    for (ds, g), cells in sorted(by.items()):
        metrics = [s.metric for s in cells]
        labels = sorted({lab for s in cells for lab in s.scores})
        out.append(f"<h3>{esc(ds)}, G = {g}</h3>")
        if not labels:
            out.append(f"<p class=\"too-few\">not scaled: {esc(cells[0].reason)}</p>")
            continue
        head = ''.join(f'<th data-col="{esc(m)}">{esc(c.lb.header(m) if m in c.lb.info else m)}</th>' for m in metrics)
        out.append(f'<table class="sortable scaled"><thead><tr><th class="l" data-col="method">method</th>{head}'
                   "</tr></thead><tbody>")
        for lab in labels:
            tds = []
            for s in cells:
                v = s.scores.get(lab, math.nan)
                tds.append(f'<td data-v="{_num_attr(v)}">{fmt.num(v)}</td>')
            out.append(f'<tr><td class="l" data-v="">{esc(lab)}</td>{"".join(tds)}</tr>')
        best = ''.join(f"<td>{esc(s.best_control or s.reason)}</td>" for s in cells)
        out.append(f'</tbody><tfoot><tr><td class="l">best control (= 1)</td>{best}</tr></tfoot></table>')
    return out


def _figure_html(f) -> str:
    return (f'<figure data-figure="{esc(f.key)}"><img alt="{esc(f.title)}" src="{data_uri(f.data)}">'
            f"<figcaption><b>{esc(f.title)}.</b> {esc(f.caption)}</figcaption></figure>")


def render_html(c: Content, title: str = "flag-bench leaderboard") -> str:
    """The whole page as text (figures in ``c`` must be PNG)."""
    body: dict[str, list[str]] = {
        "protocol": protocol_section(c),
        "leaderboard": leaderboard_section(c),
        "curves": [_figure_html(f) for f in c.figures if f.section == "curves"]
                  + [f'<p class="muted">{esc(n)}</p>' for n in c.map_notes],
        "significance": significance_section(c),
        "scaled": scaled_section(c),
        "maps": [_figure_html(f) for f in c.figures if f.section == "maps"],
        "notes": [f"<pre>{esc(chr(10).join(text_lines(c.lb.notes, 100)))}</pre>"] if text_lines(c.lb.notes, 100)
                 else ['<p class="muted">No failed or planned-but-missing cells.</p>'],
    }
    nav = "".join(f'<a href="#{k}">{esc(v)}</a>' for k, v in SECTIONS)
    sub = f"sorted by {c.lb.header(c.lb.metric)}" + (f"; showing {c.filter_text}" if c.filter_text else "")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
             f"<header><h1>{esc(title)}</h1><p>{esc(sub)}</p></header><nav>{nav}</nav><main>"]
    for key, name in SECTIONS:
        parts.append(f'<section id="{key}" data-section="{key}"><h2>{esc(name)}</h2>')
        parts += body[key]
        parts.append("</section>")
    parts.append(f"</main><script>{JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def section_ids() -> Sequence[str]:
    return [k for k, _ in SECTIONS]
