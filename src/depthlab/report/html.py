"""The sweep report: one self-contained HTML file (inline CSS, figures as base64 PNG data URIs, a few lines of
plain JavaScript to sort the run table), readable offline and safe to mail around.

Its tables are rendered from `compare_report`, the dict `depthlab compare --json` prints, with the same number
formatting as `depthlab compare`, so the report and the terminal never disagree. Every value that comes from a
config or a record is HTML-escaped: sweep names and config strings are user input.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import io
import json
import math
import os
from collections import Counter
from html import escape

from depthlab.analysis.compare import ALL, _ci, _fmt, compare_report, q_band, value_label
from depthlab.errors import DepthlabError
from depthlab.outputs import replaced
from depthlab.report import plots
from depthlab.results.export import varied_fields
from depthlab.records import STATUSES, RunRecord
from depthlab.results.store import Store

DEFAULT_OUT = "report.html"
DEFAULT_CURVE_RUNS = 8

# (id, heading, caption) of each figure, in report order; the ids are the `depthlab plot` kinds.
FIGURES = [
    ("scatter-val", "Validation loss per pair",
     "Each point is one matched pair (configs identical except the wiring): sequential final validation loss on "
     "x, parallel on y. Below the dashed line y = x, parallel is better. Colour: dataset; marker: Q band."),
    ("scatter-train", "Training loss per pair",
     "The same pairs, final training loss. The reference study found deep slightly lower in training loss."),
    ("loss-vs-q", "Validation loss against Q",
     "Every done run; Q = training examples × outputs / parameters (log scale). Lines join the mean at each Q; "
     "dotted verticals mark the Q band edges 1, 3 and 10."),
    ("winrate", "Win rate over depth × width",
     "Share of pairs in each blocks × width cell where parallel ends with the lower validation loss "
     "(0.5 = even; red favours parallel, blue sequential); the counts are wins / pairs."),
    ("curves", "Learning curves",
     "Validation loss per epoch for the pairs whose final validation losses differ most "
     "(sequential solid, parallel dashed; d = parallel − sequential)."),
    ("erf", "Receptive fields",
     "Each done run: its theoretical receptive field (stem plus the stages in sequence) against its effective one "
     "(RepLKNet: the side of the centred square holding 90% (filled) or 50% (hollow) of the gradient of the "
     "stream's centre). Shown when the sweep varies the kernel or the branch type."),
    ("prune", "Densities kept by pruning at initialisation",
     "The mean density each pruning method kept in each block of the pruned runs (deep solid, shallow dashed): "
     "does a method taper the deep stack, does it treat parallel branches alike? Shown when the sweep varies "
     "pruning."),
]

# Columns of the run table: (record key, header); then every varied config field not among them.
RUN_COLUMNS = [
    ("run_id", "run id"), ("sweep", "sweep"), ("status", "status"), ("dataset", "dataset"),
    ("topology", "topology"), ("blocks", "blocks"), ("width", "width"), ("kernel", "kernel"),
    ("params", "params"), ("q", "Q"), ("q_band", "Q band"), ("train_loss", "train loss"),
    ("val_loss", "val loss"), ("train_acc", "train acc"), ("val_acc", "val acc"), ("test_loss", "test loss"),
    ("test_acc", "test acc"), ("epochs_run", "epochs run"), ("recipe", "recipe"), ("seconds", "seconds"),
]

CSS = """
:root { --seq: #1f5fa8; --par: #e07b00; --eq: #2e7d32; --muted: #666; --line: #d9dde3; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d232b;
       margin: 0; background: #f4f6f8; }
main { max-width: 1220px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; }
.sub { color: var(--muted); margin: 0 0 2px; }
.meta { color: var(--muted); font-size: 13px; }
.seq { color: var(--seq); font-weight: 600; } .par { color: var(--par); font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(330px, 1fr)); gap: 14px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: #fbfcfd; }
.card h3 { margin: 2px 0 8px; }
.card table { width: 100%; }
.card td { padding: 3px 4px; border: none; vertical-align: top; }
.badge { display: inline-block; padding: 1px 9px; border-radius: 10px; font-weight: 600; font-size: 13px;
         color: #fff; background: #8a9099; white-space: nowrap; }
.badge.v-eq { background: var(--eq); } .badge.v-par { background: var(--par); }
.badge.v-seq { background: var(--seq); } .badge.v-inc { background: #8a9099; }
.stat { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: #eef1f4; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #f8f9fb; }
.kv td:first-child { color: var(--muted); padding-right: 16px; }
.card td, .hw td { white-space: normal; }
.hw td:first-child { white-space: nowrap; }
nav { font-size: 13px; margin: 8px 0 0; } nav a { color: #1f5fa8; text-decoration: none; }
.summary { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 10px 28px; }
.wide { overflow-x: auto; }
.scroll { max-height: 640px; overflow: auto; border: 1px solid var(--line); }
.scroll th { position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:after { content: " \\2195"; color: #aab; font-size: 11px; }
.figs { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 18px; }
figure { margin: 8px 0; }
figure.full { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
figure h3 { margin-top: 6px; }
.nodata { border: 1px dashed #bbb; color: var(--muted); padding: 18px; text-align: center; border-radius: 6px; }
.notes { color: var(--muted); font-size: 13px; }
.err { color: #a01818; max-width: 360px; overflow: hidden; text-overflow: ellipsis; }
"""

# Sorts the run table by a clicked header; cells carry their sort key in data-v (numbers numerically).
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.title = "click to sort";
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.getAttribute("data-dir") === "asc" ? -1 : 1;
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", dir === 1 ? "asc" : "desc");
      function key(row) {
        var c = row.cells[col];
        return c.hasAttribute("data-v") ? c.getAttribute("data-v") : c.textContent;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === "" || y === "") { return x === y ? 0 : (x === "" ? 1 : -1); }
        var nx = Number(x), ny = Number(y);
        if (!isNaN(nx) && !isNaN(ny)) { return dir * (nx - ny); }
        return dir * x.localeCompare(y);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def esc(value) -> str:
    """Any value as escaped HTML text (quotes too: the same helper fills attributes)."""
    return escape("" if value is None else str(value), quote=True)


def fmt(value) -> str:
    """A number as `depthlab compare` prints it (4 significant digits, '-' for none), escaped."""
    return esc(_fmt(value))


def _tost(p) -> str:
    return fmt(None if p is None else float(f"{p:.3g}"))  # as format_report rounds it


def verdict_class(group: dict) -> str:
    """Equivalent (green), b better (the second value: orange, parallel for topology), a better (blue)."""
    if group.get("equivalent"):
        return "v-eq"
    return {"b": "v-par", "a": "v-seq"}.get(group.get("favours"), "v-inc")


def badge(group: dict) -> str:
    return f'<span class="badge {verdict_class(group)}">{esc(group["verdict"])}</span>'


def _table(headers, rows, *, numeric=(), attrs="") -> str:
    """An HTML table; `rows` hold already-escaped cell HTML; columns in `numeric` are right-aligned; no header
    row when `headers` is None."""
    head = "" if headers is None else "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr></thead>"
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>" for row in rows)
    return f"<table{attrs}>{head}<tbody>{body}</tbody></table>"


# -- sections ------------------------------------------------------------------------------------------------


def _comparisons(compare: dict):
    """(metric, comparison) for every metric and every two values of the contrast."""
    for metric, results in compare.get("paired", {}).items():
        for res in results:
            yield metric, res


def _headline(compare: dict) -> str:
    contrast = compare.get("contrast", "topology")
    datasets = []
    for _, res in _comparisons(compare):
        for g in res["groups"]:
            if g["dataset"] not in datasets:
                datasets.append(g["dataset"])
    if contrast == "topology":
        what = ('d = <span class="par">parallel</span> − <span class="seq">sequential</span> (and likewise for '
                'any other pair of wirings)')
    else:
        what = f"d = b − a for two values a, b of {esc(contrast)}"
    intro = (f'<p>Runs whose configs differ only in {esc(contrast)} form a pair; {what}. Verdicts over all Q bands '
             'of each dataset: "equivalent" when a TOST test puts the mean d within the margin, a value "better" when '
             'the bootstrap CI of the mean d excludes 0 (both when both hold), otherwise inconclusive.</p>')
    if not datasets:
        return intro + f'<p class="nodata">No pairs of runs differing only in {esc(contrast)}: nothing to compare yet.</p>'
    cards = []
    for dataset in datasets:
        lines = []
        for metric, res in _comparisons(compare):
            group = next((g for g in res["groups"] if g["dataset"] == dataset and g["q_band"] == ALL
                          and g.get("by_value", ALL) == ALL), None)
            if group is None:
                continue
            stats = (f"mean d {fmt(group['mean'])}, CI {esc(_ci(group['ci_low'], group['ci_high']))}; "
                     f"{esc(res['b_label'])} better in {esc(group['wins_b'])} of {esc(group['n_pairs'])} pairs")
            name = metric if len(compare["paired"][metric]) == 1 else f"{metric}: {res['b_label']} − {res['a_label']}"
            lines.append(f'<tr><td><b>{esc(name)}</b></td><td>{badge(group)}'
                         f'<div class="stat">{stats}</div></td></tr>')
        cards.append(f'<div class="card"><h3>{esc(dataset)}</h3><table>{"".join(lines)}</table></div>')
    return intro + f'<div class="cards">{"".join(cards)}</div>'


def _summary(records: list[RunRecord], compare: dict, source: str | None) -> str:
    counts = {s: 0 for s in STATUSES}
    counts.update(compare.get("counts") or {})
    status_rows = [[esc(s), esc(n)] for s, n in counts.items()] + [["<b>total</b>", f"<b>{esc(len(records))}</b>"]]

    by_dataset = Counter(str(r.config.get("dataset")) for r in records)
    done_by_dataset = Counter(str(r.config.get("dataset")) for r in records if r.status == "done")
    dataset_rows = [[esc(d), esc(n), esc(done_by_dataset[d])] for d, n in sorted(by_dataset.items())]

    # a pack's models share its time: each run counts its share (RunRecord.pack_seconds), so packs count once
    seconds = [float(r.pack_seconds) for r in records if plots.finite(r.pack_seconds) is not None]
    timing = [("compute time (packs added)", f"{sum(seconds):.1f} s ({sum(seconds) / 3600:.2f} h)" if seconds
               else "-"),
              ("mean per timed run (its share of its pack)",
               f"{sum(seconds) / len(seconds):.2f} s ({len(seconds)} runs)" if seconds else "-")]
    for topology in plots.TOPOLOGY_COLORS:
        sel = [float(r.pack_seconds) for r in records
               if r.config.get("topology") == topology and plots.finite(r.pack_seconds) is not None]
        if sel:
            timing.append((f"mean, {topology}", f"{sum(sel) / len(sel):.2f} s"))
    params = [r.params for r in records if isinstance(r.params, int)]
    if params:
        timing.append(("parameters", f"{min(params):,} – {max(params):,}"))
    qs = [float(r.q) for r in records if plots.finite(r.q) is not None]
    if qs:
        timing.append(("Q", f"{min(qs):.3g} – {max(qs):.3g}"))
    timing_rows = [[esc(k), esc(v)] for k, v in timing]

    hardware = []
    for key, label in (("device", "device"), ("torch", "torch"), ("host", "host"), ("pack_size", "pack size")):
        seen = Counter(str(r.env[key]) for r in records if key in r.env)
        if seen:
            hardware.append([esc(label), "<br>".join(f"{esc(v)} <span class='stat'>({n} runs)</span>"
                                                      for v, n in seen.most_common(6))])
    hw = (_table(None, hardware, attrs=' class="kv hw"') if hardware
          else '<p class="stat">no run recorded its environment yet</p>')

    sweeps = Counter(str(r.sweep or "(unnamed)") for r in records)
    sweep_line = ", ".join(f"{esc(s)} ({n})" for s, n in sweeps.items())
    status = _table(["status", "runs"], status_rows, numeric={1}, attrs=' class="kv" id="status-table"')
    datasets = _table(["dataset", "runs", "done"], dataset_rows, numeric={1, 2})
    timing = _table(None, timing_rows, attrs=' class="kv"')
    where = f"store {esc(source)} · " if source else ""
    return (
        f'<p class="meta">{where}sweeps: {sweep_line}</p><div class="summary">'
        f"<div><h3>Runs by status</h3>{status}</div><div><h3>Datasets</h3>{datasets}</div>"
        f"<div><h3>Time and size</h3>{timing}</div><div><h3>Hardware</h3>{hw}</div></div>"
    )


def _band_section(compare: dict) -> str:
    contrast = compare.get("contrast", "topology")
    rows = [[esc(r["dataset"]), esc(r["value"] if contrast == "topology" else value_label(contrast, r["value"])),
             esc(r["q_band"]), fmt(r["n"]), fmt(r["train_loss_mean"]),
             fmt(r["train_loss_std"]), fmt(r["val_loss_mean"]), fmt(r["val_loss_std"]), fmt(r["train_acc_mean"]),
             fmt(r["val_acc_mean"])] for r in compare.get("band_table", [])]
    intro = (f"<p>Mean final metrics of the done runs per dataset × {esc(contrast)} × band of Q = training examples × "
             "outputs / parameters (the reference study's grouping); sd is the standard deviation over runs.</p>")
    if not rows:
        return intro + '<p class="nodata">No done runs yet.</p>'
    headers = ["dataset", contrast, "Q band", "n", "train_loss", "sd", "val_loss", "sd", "train_acc", "val_acc"]
    return intro + '<div class="wide">' + _table(headers, rows, numeric=set(range(3, 10)),
                                                 attrs=' id="band-table"') + "</div>"


def _paired_section(compare: dict) -> str:
    """One table per metric and pair of values, the rows and numbers of `depthlab compare` (same formatting)."""
    out, by = [], compare.get("by")
    notes = "".join(f"<li>{esc(n)}</li>" for n in compare.get("notes", []))
    if notes:
        out.append(f'<ul class="notes">{notes}</ul>')
    if not any(compare.get("paired", {}).values()):
        out.append(f'<p class="nodata">Only one value of {esc(compare.get("contrast", "topology"))}: nothing to '
                   'pair.</p>')
    for metric, res in _comparisons(compare):
        p, a, b = res["pairs"], res["a_label"], res["b_label"]
        favours = "higher is better: d &gt; 0" if res["higher_is_better"] else "lower is better: d &lt; 0"
        out.append(f"<h3>{esc(metric)}: {esc(b)} − {esc(a)} <span class='stat'>({favours} favours {esc(b)})</span></h3>")
        identical = (f'; {esc(p["n_identical"])} runs of one-block pairs (identical wirings) left out'
                     if res.get("contrast", "topology") == "topology" else "")
        out.append(
            f'<p class="stat">{res["ci_level"]:.0%} percentile-bootstrap CI of the mean d ({esc(res["n_boot"])} '
            f'resamples, seed {esc(res["seed"])}); TOST at alpha {esc(format(res["alpha"], "g"))}; margin: '
            f'{esc(res["margin_rule"])}.<br>Pairs: <b>{esc(p["n_pairs"])}</b> compared of {esc(p["n_found"])} '
            f'found; {esc(p["n_excluded"])} excluded with a diverged, failed, blown-up or unlearned run (diverged: '
            f'{esc(a)} {esc(p["diverged"][a])}, {esc(b)} {esc(p["diverged"][b])}; failed: {esc(a)} '
            f'{esc(p["failed"][a])}, {esc(b)} {esc(p["failed"][b])}; blown up: {esc(a)} {esc(p["blown_up"][a])}, '
            f'{esc(b)} {esc(p["blown_up"][b])}; not learned: {esc(a)} {esc(p["not_learned"][a])}, {esc(b)} '
            f'{esc(p["not_learned"][b])}); {esc(p["n_unfinished"])} '
            f'unfinished; {esc(p["n_missing"])} missing {esc(metric)}; {esc(p["n_unpaired"])} runs without partner; '
            f'{esc(p["n_duplicate"])} in ambiguous duplicates{identical}.</p>')
        headers = ["dataset", "Q band"] + ([by] if by else []) + [
            "pairs", "excl", "mean d", "median d", "CI", f"wins {b}/{a}/tie", "margin", "TOST p", "verdict"]
        rows = []
        for g in res["groups"]:
            rows.append([esc(g["dataset"]), esc(g["q_band"])] + ([fmt(g["by_value"])] if by else []) + [
                fmt(g["n_pairs"]), fmt(g["n_excluded"]), fmt(g["mean"]), fmt(g["median"]),
                esc(_ci(g["ci_low"], g["ci_high"])), esc(f"{g['wins_b']}/{g['wins_a']}/{g['ties']}"),
                fmt(g["margin"]), _tost(g["tost_p"]), badge(g)])
        if rows:
            first = 3 if by else 2  # pairs .. TOST p are numbers, except the CI and the win counts
            numeric = set(range(first, first + 8)) - {first + 4, first + 5}
            ident = metric if len(compare["paired"][metric]) == 1 else f"{metric}-{res['a']}-{res['b']}"
            table = _table(headers, rows, numeric=numeric, attrs=f' id="paired-{esc(ident)}"')
            out.append(f'<div class="wide">{table}</div>')
        else:
            out.append(f'<p class="nodata">No {esc(a)}/{esc(b)} pairs.</p>')
    return "".join(out)


def figure_html(kind: str, records: list[RunRecord], n: int = DEFAULT_CURVE_RUNS, image_format: str = "png") -> str:
    """The figure as an inline image (base64 data URI), or a "no data" note saying why there is none."""
    try:
        fig = plots.figure(kind, records, n)
    except plots.NoData as err:
        return f'<p class="nodata">no data: {esc(err)}</p>'
    buf = io.BytesIO()
    fig.savefig(buf, format=image_format, dpi=plots.DPI)
    mime = "image/png" if image_format == "png" else "image/svg+xml"
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(kind)}" src="data:{mime};base64,{data}">'


def _figures(records: list[RunRecord], n: int, image_format: str) -> str:
    # two figures a row; the curves (legend at the side), and the per-dataset panels of loss-vs-q and winrate
    # when there are several datasets, take a whole row
    several = len({str(r.config.get("dataset")) for r in records if r.status == "done"}) > 1
    varied = set(varied_fields(records))
    out = []
    for kind, heading, caption in FIGURES:
        if kind in plots.CONDITIONAL and not varied & set(plots.CONDITIONAL[kind]):
            continue
        full = ' class="full"' if kind == "curves" or (several and kind in ("loss-vs-q", "winrate")) else ""
        out.append(f'<figure id="fig-{kind}"{full}><h3>{esc(heading)}</h3>'
                   f'{figure_html(kind, records, n, image_format)}<figcaption>{esc(caption)}</figcaption></figure>')
    return f'<div class="figs">{"".join(out)}</div>'


def _sort_key(value) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, float)):
        return repr(float(value)) if math.isfinite(value) else ""
    return str(value)


def _cell(value) -> tuple[str, str, bool]:
    """(shown text, sort key, numeric) of one run-table value."""
    if isinstance(value, float):
        return _fmt(value), _sort_key(value), True
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), _sort_key(value), True
    if isinstance(value, (list, dict)):
        value = json.dumps(value, sort_keys=True, default=str)
    text = "-" if value is None else str(value)
    return text, _sort_key(value), False


def _runs_table(records: list[RunRecord]) -> str:
    keys = {k for k, _ in RUN_COLUMNS}
    extra = [f for f in varied_fields(records) if f not in keys]
    headers = [h for _, h in RUN_COLUMNS] + extra + ["error"]
    rows = []
    for rec in records:
        flat = rec.as_row()  # the run's columns, config fields among them, as the results table shows them
        values = [q_band(rec.q) if k == "q_band" else flat.get(k) for k, _ in RUN_COLUMNS]
        values += [rec.config.get(f) for f in extra]
        cells = []
        for value in values:
            text, key, numeric = _cell(value)
            cells.append(f'<td{" class=n" if numeric else ""} data-v="{esc(key)}">{esc(text)}</td>')
        error = rec.error or ""
        short = error if len(error) <= 80 else error[:77] + "..."
        cells.append(f'<td class="err" title="{esc(error)}">{esc(short)}</td>')
        rows.append(f'<tr class="status-{esc(rec.status)}">{"".join(cells)}</tr>')
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return (f'<p class="stat">{len(records)} runs; click a column header to sort. Config fields that vary across '
            f'the runs follow the results.</p><div class="scroll"><table class="sortable" id="runs-table">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


# -- the page -------------------------------------------------------------------------------------------------


def build_report(records: list[RunRecord], title: str = "depthlab report", compare: dict | None = None, *,
                 runs: int = DEFAULT_CURVE_RUNS, source: str | None = None, image_format: str = "png",
                 shift: list[RunRecord] | None = None) -> str:
    """The report of `records` (from `Store.records`) as one HTML page. `compare`: a `compare_report` of the
    same records (computed with its defaults when None); `runs`: at most this many runs in the learning curves;
    `source`: where the records came from (shown in the header); `shift`: the store's shift measurements as
    records (`depthlab.shift.records`), shown in a section of their own when there are any."""
    if image_format not in plots.FORMATS:
        raise DepthlabError(f"image format {image_format!r}: use {' or '.join(plots.FORMATS)}")
    if compare is None:
        compare = compare_report(records)
    from depthlab import __version__

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # The CSP lets the page load nothing from anywhere and run only our own script (by hash): an escaping bug
    # elsewhere could still not run injected script.
    digest = base64.b64encode(hashlib.sha256(SORT_JS.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<header id="top">
<h1>{esc(title)}</h1>
<p class="sub">Deep and narrow or shallow and wide: <span class="seq">sequential</span> (deep) against
<span class="par">parallel</span> (shallow) residual networks at equal parameters.</p>
<p class="meta">{esc(len(records))} runs · generated {esc(now)} by depthlab {esc(__version__)}</p>
</header>
<nav><a href="#headline">verdicts</a> · <a href="#summary">sweep</a> · <a href="#figures">figures</a> ·
<a href="#paired">paired comparison</a> · <a href="#bands">Q bands</a>{_shift_nav(shift)} · <a href="#runs">every run</a></nav>
<section id="headline"><h2>Headline verdicts</h2>{_headline(compare)}</section>
<section id="summary"><h2>The sweep</h2>{_summary(records, compare, source)}</section>
<section id="figures"><h2>Figures</h2>{_figures(records, runs, image_format)}</section>
<section id="paired"><h2>Paired comparison</h2>{_paired_section(compare)}</section>
<section id="bands"><h2>Mean final metrics by Q band</h2>{_band_section(compare)}</section>
{_shift_section(shift, image_format)}
<section id="runs"><h2>Every run</h2>{_runs_table(records)}</section>
</main>
<script>{SORT_JS}</script>
</body>
</html>
"""


def load_records(store_path, sweep: str | None = None) -> list[RunRecord]:
    """The records of an existing store (of one sweep when given); a missing store or no runs is an error."""
    store_path = os.fspath(store_path)
    with Store.existing(store_path, readonly=True) as store:
        records = store.records(sweep=sweep)
        sweeps = store.sweeps()
    if not records:
        if sweep is not None:
            raise DepthlabError(f"the store {store_path!r} holds no runs of sweep {sweep!r}; its sweeps: "
                                + (", ".join(repr(s) for s in sweeps) or "none"))
        raise DepthlabError(f"the store {store_path!r} holds no runs; start a sweep with `depthlab run`")
    return records


def write_report(store_path, out_path=DEFAULT_OUT, sweep: str | None = None, *, runs: int = DEFAULT_CURVE_RUNS,
                 title: str | None = None, margin: float | None = None, image_format: str = "png",
                 contrast: str = "topology", allow_mixed_recipes: bool = False) -> str:
    """Read the store, write the report to `out_path`; returns the path written."""
    records = load_records(store_path, sweep)
    if title is None:
        title = f"depthlab report: {sweep or os.path.basename(os.fspath(store_path))}"
    compare = compare_report(records, margin=margin, contrast=contrast, allow_mixed_recipes=allow_mixed_recipes)
    page = build_report(records, title=title, compare=compare, runs=runs,
                        source=os.fspath(store_path), image_format=image_format,
                        shift=load_shift(store_path, sweep))
    out_path = os.fspath(out_path)
    try:
        with replaced(out_path) as temp, open(temp, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as err:
        raise DepthlabError(f"cannot write {out_path}: {err.strerror or err}") from err
    return out_path


# -- covariate shift (`depthlab shift`) -----------------------------------------------------------------------


def load_shift(store_path, sweep: str | None = None) -> list[RunRecord]:
    """The store's shift measurements as records (none: an empty list)."""
    from depthlab.shift.records import load_shift_records

    with Store.existing(os.fspath(store_path), readonly=True) as store:
        return load_shift_records(store, sweep=sweep)


def _shift_nav(shift) -> str:
    return ' · <a href="#shift">covariate shift</a>' if shift else ""


def _fig_img(fig, image_format: str, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format=image_format, dpi=plots.DPI)
    mime = "image/png" if image_format == "png" else "image/svg+xml"
    return f'<img alt="{esc(alt)}" src="data:{mime};base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def _shift_section(shift, image_format: str = "png") -> str:
    """The corruption × method error heat map per wiring and batch size, and the mean error per method."""
    if not shift:
        return ""
    try:
        figure = _fig_img(plots.shift_heatmap(shift), image_format, "shift-heatmap")
    except plots.NoData as err:
        figure = f'<p class="nodata">no data: {esc(err)}</p>'
    cells = plots.shift_cells(shift)
    panels = sorted(cells, key=lambda k: (k[1], k[0]))
    methods = sorted({m for panel in cells.values() for _, m in panel}, key=plots._method_order)
    rows = []
    for m in methods:
        row = [esc(m)]
        for panel in panels:
            errs = [e for (c, mm), (e, _) in cells[panel].items() if mm == m]
            row.append(fmt(sum(errs) / len(errs) if errs else None))
        rows.append(row)
    headers = ["method"] + [f"{t}, batch {b}" for t, b in panels]
    table = _table(headers, rows, numeric=set(range(1, len(headers))), attrs=' id="shift-table"')
    counts = Counter(r.status for r in shift)
    return (
        '<section id="shift"><h2>Covariate shift</h2>'
        f'<p>{esc(len(shift))} measurements of trained runs on corrupted test streams ({esc(counts.get("done", 0))} '
        f'done, {esc(counts.get("diverged", 0))} diverged), by <code>depthlab shift</code>. Test error = 1 − '
        'accuracy of the online predictions, averaged over runs, seeds and severities. Methods with an alpha carry '
        'it in their name; <b>core_reconstructed</b> is a reconstruction of the α-BN paper\'s Core loss, not its '
        'published formula. Paired statistics: <code>depthlab compare --table shift --contrast method</code>.</p>'
        f'<figure id="fig-shift-heatmap" class="full">{figure}<figcaption>Rows: corruptions; columns: test-time '
        'methods; one panel per wiring and evaluation batch size; cells in %.</figcaption></figure>'
        f'<h3>Mean test error over corruptions</h3><div class="wide">{table}</div></section>'
    )
