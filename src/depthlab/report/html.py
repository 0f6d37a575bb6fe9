"""The sweep report: one self-contained HTML file (inline CSS, figures as base64 PNG data URIs or inline SVG, a few
lines of plain JavaScript to sort the run table), readable offline and safe to mail around.

Its tables are rendered from `compare_report`, the dict `depthlab compare --json` prints, with the same number
formatting as `depthlab compare`, so the report and the terminal never disagree. With `by` (a config field, as
`depthlab compare --by`) the verdicts, the tables and the comparison figures are split by its values too.

The page is a jinja2 template (`templates/report.html.j2`) rendered with autoescape on: this module prepares
plain values (text, numbers as `depthlab compare` prints them) and the template escapes every one of them, since
sweep names and config strings are user input. Only the CSS, the sorting script and the figures are markup. The
page's Content-Security-Policy lets it load nothing and run only that script (by hash), so even an escaping bug
could not run injected script.

A large sweep's page stays readable and small: above MAX_TABLE_RUNS runs the run table is one row per setting
(seeds averaged, as `depthlab summary`) and points to `depthlab results` for every run; a scatter panel of more
than `plots.MAX_POINTS` pairs is a 2-D histogram and one of more runs shows a fixed-seed sample (each figure's
caption says so); the learning curves read the per-epoch history of the few runs they may draw only
(`plots.curve_candidates`), the rest of the store is read once without it.
"""

from __future__ import annotations

import base64
import datetime as _dt
import functools
import hashlib
import json
import math
import os
import shlex
from collections import Counter
from pathlib import Path
from typing import Callable

import jinja2
from markupsafe import Markup

from depthlab.analysis.compare import (ALL, _ci, _fmt, _remembering, band_table, check_by, compare_report, q_band,
                                       value_label)
from depthlab.analysis.summary import summarise
from depthlab.choices import REPORT_IMAGE_FORMATS
from depthlab.errors import DepthlabError
from depthlab.outputs import replaced
from depthlab.records import STATUSES, RunRecord, canonical_json
from depthlab.report import plots
from depthlab.results.export import varied_fields
from depthlab.results.store import Store, collector_paused

DEFAULT_OUT = "report.html"
DEFAULT_CURVE_RUNS = 8
# Above this many runs the "every run" table is one row per setting (seeds averaged, as `depthlab summary`), and
# at most this many rows of it: a sortable table of 100,000 rows makes a page of about 100 MB that a browser
# opens slowly and nobody reads; `depthlab results` exports every run.
MAX_TABLE_RUNS = 2_000
SUMMARY_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc", "test_acc")  # the settings table's means
TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "report.html.j2"

# (id, heading, caption) of each figure, in report order; the ids are the `depthlab plot` kinds.
FIGURES = [
    ("scatter-val", "Validation loss per pair",
     "Each point is one matched pair (configs identical except the wiring): the deepest wiring's final "
     "validation loss on x (sequential), a shallower wiring's on y (parallel, or groups:g). Below the dashed line "
     "y = x, the shallower wiring is better. Colour: wiring; marker: Q band; one panel per dataset."),
    ("scatter-train", "Training loss per pair",
     "The same pairs, final training loss. The reference study found deep slightly lower in training loss."),
    ("loss-vs-q", "Validation loss against Q",
     "Every done run of every wiring; Q = training examples × outputs / parameters (log scale). Lines join the "
     "mean at each Q; dotted verticals mark the Q band edges 1, 3 and 10."),
    ("winrate", "Win rate over depth × width",
     "Share of pairs in each blocks × width cell where the shallower wiring ends with the lower validation loss "
     "than the deepest one, one panel per shallower wiring (0.5 = even; red favours the shallower wiring, blue "
     "the deeper); the counts are wins / pairs."),
    ("curves", "Learning curves",
     "Validation loss per epoch for the pairs whose final validation losses differ most (one colour per pair, "
     "one line style per wiring; d = shallower − deeper). Runs of fewer than 2 epochs have no curve."),
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
.summary > div { min-width: 0; } .summary td { white-space: normal; }
.wide { overflow-x: auto; }
.scroll { max-height: 640px; overflow: auto; border: 1px solid var(--line); }
.scroll th { position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:after { content: " \\2195"; color: #aab; font-size: 11px; }
.figs { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 18px; }
figure { margin: 8px 0; }
figure.full { grid-column: 1 / -1; }
figure img, figure svg { max-width: 100%; height: auto; display: block; margin: 0 auto; }
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


def _tost(p) -> str:
    return _fmt(None if p is None else float(f"{p:.3g}"))  # as format_report rounds it


def verdict_class(group: dict) -> str:
    """Equivalent (green), b better (the second value: orange, parallel for topology), a better (blue)."""
    if group.get("equivalent"):
        return "v-eq"
    return {"b": "v-par", "a": "v-seq"}.get(group.get("favours"), "v-inc")


def badge(group: dict) -> dict:
    """A verdict as the template's `cell` shows it: a coloured badge."""
    return {"badge": verdict_class(group), "text": group["verdict"]}


def _table(headers, rows, *, numeric=(), id=None, cls=None) -> dict:
    """A table for the template's `table` macro: `rows` of cells (text, or a `badge`/bold dict); columns in
    `numeric` are right-aligned; no header row when `headers` is None."""
    return dict(headers=headers, rows=rows, numeric=set(numeric), id=id, cls=cls)


# -- sections, as plain values for the template ---------------------------------------------------------------


def _comparisons(compare: dict):
    """(metric, comparison) for every metric and every two values of the contrast."""
    for metric, results in compare.get("paired", {}).items():
        for res in results:
            yield metric, res


_OVERALL = object()  # the groups over every value of the `by` field


def _in_group(g: dict, dataset: str, by_value) -> bool:
    """Whether `g` is the all-bands group of `dataset` and, given one, of that value of the `by` field (groups
    carry JSON-safe values, so they are compared as canonical JSON)."""
    if g["dataset"] != dataset or g["q_band"] != ALL:
        return False
    if by_value is _OVERALL:
        return g.get("by_value", ALL) == ALL
    return g.get("by_value", ALL) != ALL and canonical_json(g["by_value"]) == canonical_json(by_value)


def _cards(compare: dict, by_value=_OVERALL) -> list[dict]:
    """One card per dataset: the verdict of each metric and pair of values over all Q bands (and of one value of
    the `by` field when given)."""
    datasets = list(dict.fromkeys(g["dataset"] for _, res in _comparisons(compare) for g in res["groups"]))
    cards = []
    for dataset in datasets:
        lines = []
        for metric, res in _comparisons(compare):
            group = next((g for g in res["groups"] if _in_group(g, dataset, by_value)), None)
            if group is None:
                continue
            name = metric if len(compare["paired"][metric]) == 1 else f"{metric}: {res['b_label']} − {res['a_label']}"
            lines.append(dict(name=name, badge=badge(group),
                              stats=f"mean d {_fmt(group['mean'])}, CI {_ci(group['ci_low'], group['ci_high'])}; "
                                    f"{res['b_label']} better in {group['wins_b']} of {group['n_pairs']} pairs"))
        if lines:
            cards.append(dict(dataset=dataset, lines=lines))
    return cards


def _headline(compare: dict) -> dict:
    return dict(contrast=compare.get("contrast", "topology"), cards=_cards(compare))


def _by_sections(records: list[RunRecord], compare: dict, by: str | None) -> list[dict]:
    """One section per value of `by`, in value order: its verdicts per dataset."""
    if by is None:
        return []
    return [dict(id=f"by-{i}", label=label, cards=_cards(compare, subset[0].config.get(by)))
            for i, (label, subset) in enumerate(plots.split(records, by))]


def _summary(records: list[RunRecord], compare: dict, source: str | None) -> dict:
    counts = {s: 0 for s in STATUSES}
    counts.update(compare.get("counts") or {})
    status_rows = [[s, n] for s, n in counts.items()] + [[{"bold": "total"}, {"bold": len(records)}]]

    by_dataset = Counter(str(r.config.get("dataset")) for r in records)
    done_by_dataset = Counter(str(r.config.get("dataset")) for r in records if r.status == "done")
    dataset_rows = [[d, n, done_by_dataset[d]] for d, n in sorted(by_dataset.items())]

    # a pack's models share its time: each run counts its share (RunRecord.pack_seconds), so packs count once
    seconds = [float(r.pack_seconds) for r in records if plots.finite(r.pack_seconds) is not None]
    timing = [("compute time (packs added)", f"{sum(seconds):.1f} s ({sum(seconds) / 3600:.2f} h)" if seconds
               else "-"),
              ("mean per timed run (its share of its pack)",
               f"{sum(seconds) / len(seconds):.2f} s ({len(seconds)} runs)" if seconds else "-")]
    per_wiring: dict[str, list[float]] = {}  # one pass: a pass per wiring is seconds at 100,000 runs
    for r in records:
        if plots.finite(r.pack_seconds) is not None:
            per_wiring.setdefault(str(r.config.get("topology")), []).append(float(r.pack_seconds))
    for wiring in plots.wirings(records):
        sel = per_wiring.get(wiring)
        if sel:
            timing.append((f"mean, {wiring}", f"{sum(sel) / len(sel):.2f} s"))
    params = [r.params for r in records if isinstance(r.params, int)]
    if params:
        timing.append(("parameters", f"{min(params):,} – {max(params):,}"))
    qs = [float(r.q) for r in records if plots.finite(r.q) is not None]
    if qs:
        timing.append(("Q", f"{min(qs):.3g} – {max(qs):.3g}"))

    hardware = []
    for key, label in (("device", "device"), ("torch", "torch"), ("host", "host"), ("pack_size", "pack size")):
        seen = Counter(str(r.env[key]) for r in records if key in r.env)
        if seen:
            hardware.append(dict(label=label, values=seen.most_common(6)))
    return dict(
        source=source, sweeps=list(Counter(str(r.sweep or "(unnamed)") for r in records).items()),
        status=_table(["status", "runs"], status_rows, numeric={1}, id="status-table", cls="kv"),
        datasets=_table(["dataset", "runs", "done"], dataset_rows, numeric={1, 2}),
        timing=_table(None, [list(row) for row in timing], cls="kv"), hardware=hardware)


def _band_section(records: list[RunRecord], compare: dict, by: str | None) -> dict:
    """The mean final metrics per dataset × contrast value × Q band (compare's band table), with `by` per value
    of that field too."""
    contrast = compare.get("contrast", "topology")
    parts = [(None, compare.get("band_table", []))] if by is None else [
        (subset[0].config.get(by), band_table(subset, contrast)) for _, subset in plots.split(records, by)]
    rows = []
    for value, table in parts:
        for r in table:
            shown = r["value"] if contrast == "topology" else value_label(contrast, r["value"])
            rows.append([r["dataset"]] + ([_fmt(value)] if by else []) + [
                shown, r["q_band"], _fmt(r["n"]), _fmt(r["train_loss_mean"]), _fmt(r["train_loss_std"]),
                _fmt(r["val_loss_mean"]), _fmt(r["val_loss_std"]), _fmt(r["train_acc_mean"]),
                _fmt(r["val_acc_mean"])])
    headers = ["dataset"] + ([by] if by else []) + [contrast, "Q band", "n", "train_loss", "sd", "val_loss", "sd",
                                                    "train_acc", "val_acc"]
    first = 4 if by else 3
    return dict(contrast=contrast, by=by, table=_table(headers, rows, numeric=range(first, first + 7),
                                                       id="band-table") if rows else None)


def _paired_section(compare: dict) -> dict:
    """One table per metric and pair of values, the rows and numbers of `depthlab compare` (same formatting)."""
    by = compare.get("by")
    out = []
    for metric, res in _comparisons(compare):
        b = res["b_label"]
        rows = [[g["dataset"], g["q_band"]] + ([_fmt(g["by_value"])] if by else []) + [
            _fmt(g["n_pairs"]), _fmt(g["n_excluded"]), _fmt(g["mean"]), _fmt(g["median"]),
            _ci(g["ci_low"], g["ci_high"]), f"{g['wins_b']}/{g['wins_a']}/{g['ties']}", _fmt(g["margin"]),
            _tost(g["tost_p"]), badge(g)] for g in res["groups"]]
        headers = ["dataset", "Q band"] + ([by] if by else []) + [
            "pairs", "excl", "mean d", "median d", "CI", f"wins {b}/{res['a_label']}/tie", "margin", "TOST p",
            "verdict"]
        first = 3 if by else 2  # pairs .. TOST p are numbers, except the CI and the win counts
        numeric = set(range(first, first + 8)) - {first + 4, first + 5}
        ident = metric if len(compare["paired"][metric]) == 1 else f"{metric}-{res['a']}-{res['b']}"
        out.append(dict(
            metric=metric, res=res, p=res["pairs"], ci_level=f"{res['ci_level']:.0%}", alpha=format(res["alpha"], "g"),
            favours="higher is better: d > 0" if res["higher_is_better"] else "lower is better: d < 0",
            identical=res.get("contrast", "topology") == "topology",
            table=_table(headers, rows, numeric=numeric, id=f"paired-{ident}") if rows else None))
    return dict(notes=compare.get("notes", []), contrast=compare.get("contrast", "topology"),
                any_pairs=any(compare.get("paired", {}).values()), comparisons=out)


def _image(fig, image_format: str, alt: str) -> dict:
    """A figure for the template's `image` macro: a base64 PNG data URI, or the SVG element itself."""
    if image_format == "svg":
        return dict(svg=Markup(plots.svg_element(fig)), src=None, alt=alt, nodata=None)
    data = base64.b64encode(plots.render(fig, "png")).decode("ascii")
    return dict(svg=None, src=f"data:image/png;base64,{data}", alt=alt, nodata=None)


def _drawn(make, image_format: str, alt: str, notes: list | None = None) -> dict:
    """`make()`'s figure as an image, or why there is none; what it binned or sampled is added to `notes`."""
    try:
        fig = make()
        if notes is not None and plots.note(fig):
            notes.append(plots.note(fig))
        return _image(fig, image_format, alt)
    except plots.NoData as err:
        return dict(svg=None, src=None, alt=alt, nodata=str(err))


def _figures(records: list[RunRecord], n: int, image_format: str, by: str | None,
             histories: Callable[[list[str]], list[RunRecord]] | None = None) -> list[dict]:
    # two figures a row; the curves (legend at the side), and the comparison figures split into panels (several
    # datasets or a `by` field), take a whole row
    several = len({str(r.config.get("dataset")) for r in records if r.status == "done"}) > 1
    # only whether the conditional figures' fields vary: every field's check is a second or more at 100,000 runs
    varied = set(varied_fields([plots.conditional_config(r) for r in records]))
    out = []
    for kind, heading, caption in FIGURES:
        if kind in plots.CONDITIONAL and not varied & set(plots.CONDITIONAL[kind]):
            continue
        comparison = kind in plots.DEFAULT_METRIC  # these split by `by`
        wide = kind == "curves" or (comparison and (by is not None or several))
        kind_by = by if comparison else None
        drawn = records
        if kind == "curves" and histories is not None:  # only the runs it may draw carry their history
            place = {r.run_id: i for i, r in enumerate(records)}
            drawn = sorted(histories(plots.curve_candidates(records, n, plots.DEFAULT_METRIC[kind], kind_by)),
                           key=lambda r: place.get(r.run_id, len(place)))
        notes = []
        image = _drawn(lambda: plots.figure(kind, drawn, n, by=kind_by), image_format, kind, notes)
        out.append(dict(kind=kind, heading=heading, caption=" ".join([caption, *notes]), full=wide, image=image))
    return out


def _sort_key(value) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, float)):
        return repr(float(value)) if math.isfinite(value) else ""
    return str(value)


def _cell(value) -> dict:
    """One run-table value: its shown text, its sort key, and whether it is a number."""
    if isinstance(value, float):
        return dict(text=_fmt(value), key=_sort_key(value), numeric=True)
    if isinstance(value, int) and not isinstance(value, bool):
        return dict(text=str(value), key=_sort_key(value), numeric=True)
    if isinstance(value, (list, dict)):
        value = json.dumps(value, sort_keys=True, default=str)
    return dict(text="-" if value is None else str(value), key=_sort_key(value), numeric=False)


def _runs_table(records: list[RunRecord], source: str | None = None) -> dict:
    """Every run, one row each; above MAX_TABLE_RUNS, one row per setting instead (`_settings_table`)."""
    if len(records) > MAX_TABLE_RUNS:
        return _settings_table(records, source)
    keys = {k for k, _ in RUN_COLUMNS}
    extra = [f for f in varied_fields(records) if f not in keys]
    rows = []
    for rec in records:
        flat = rec.as_row()  # the run's columns, config fields among them, as the results table shows them
        values = [q_band(rec.q) if k == "q_band" else flat.get(k) for k, _ in RUN_COLUMNS]
        values += [rec.config.get(f) for f in extra]
        error = rec.error or ""
        rows.append(dict(status=rec.status, cells=[_cell(v) for v in values], error=error,
                         short=error if len(error) <= 80 else error[:77] + "..."))
    return dict(headers=[h for _, h in RUN_COLUMNS] + extra + ["error"], rows=rows, note=None)


def _sweep_option(records: list[RunRecord]) -> str:
    """` --sweep NAME` when the records are one sweep's (a report of `--sweep`), so the command exports just it."""
    sweeps = {r.sweep for r in records}
    return f" --sweep {shlex.quote(sweeps.pop())}" if len(sweeps) == 1 and None not in sweeps else ""


def _settings_table(records: list[RunRecord], source: str | None) -> dict:
    """One row per setting (the varied config fields but the seed, as `depthlab summary` groups them): its runs
    per status and the mean of SUMMARY_METRICS over its done runs; the first MAX_TABLE_RUNS settings."""
    summary = summarise(records, metrics=SUMMARY_METRICS)
    statuses = [s for s in STATUSES if any(row[s] for row in summary["rows"])]
    rows = []
    for row in summary["rows"][:MAX_TABLE_RUNS]:
        values = [row[f] for f in summary["by"]] + [row["runs"]] + [row[s] for s in statuses]
        values += [row[f"{m}_mean"] for m in SUMMARY_METRICS]
        rows.append(dict(status=None, cells=[_cell(v) for v in values], error=None, short=None))
    n = len(summary["rows"])
    shown = f"the first {MAX_TABLE_RUNS:,} of its {n:,} settings" if n > MAX_TABLE_RUNS else f"its {n:,} settings"
    note = (f"{len(records):,} runs, more than the {MAX_TABLE_RUNS:,} a page lists one by one: this table shows "
            f"{shown}, a row per setting (configs equal but for the seed), with its runs per status and the mean "
            f"of each metric over its done runs (as depthlab summary). Every run: depthlab results --store "
            f"{shlex.quote(source or 'STORE')}{_sweep_option(records)} (CSV, JSON or Parquet).")
    headers = summary["by"] + ["runs", *statuses] + [f"{m.replace('_', ' ')} (mean)" for m in SUMMARY_METRICS]
    return dict(headers=headers, rows=rows, note=note)


# -- covariate shift (`depthlab shift`) -----------------------------------------------------------------------


def load_shift(store_path, sweep: str | None = None) -> list[RunRecord]:
    """The store's shift measurements as records (none: an empty list)."""
    with Store.existing(os.fspath(store_path), readonly=True) as store:
        rows = store.shift_rows()
        if not rows:  # the usual case: nothing to read, and the shift package (it imports torch) stays unloaded
            return []
        from depthlab.shift.records import load_shift_records

        return load_shift_records(store, sweep=sweep, rows=rows)


def _shift_section(shift, image_format: str = "png") -> dict | None:
    """The corruption × method error heat map per wiring and batch size, and the mean error per method."""
    if not shift:
        return None
    cells = plots.shift_cells(shift)
    panels = sorted(cells, key=lambda k: (plots.wiring_depth(k[0]), plots._order(k[1])))
    methods = sorted({m for panel in cells.values() for _, m in panel}, key=plots._method_order)
    rows = []
    for m in methods:
        row = [m]
        for panel in panels:
            errs = [e for (c, mm), (e, _) in cells[panel].items() if mm == m]
            row.append(_fmt(sum(errs) / len(errs) if errs else None))
        rows.append(row)
    headers = ["method"] + [f"{t}, batch {b}" for t, b in panels]
    counts = Counter(r.status for r in shift)
    return dict(n=len(shift), done=counts.get("done", 0), diverged=counts.get("diverged", 0),
                figure=_drawn(lambda: plots.shift_heatmap(shift), image_format, "shift-heatmap"),
                table=_table(headers, rows, numeric=range(1, len(headers)), id="shift-table"))


# -- the page -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def build_report(records: list[RunRecord], title: str = "depthlab report", compare: dict | None = None, *,
                 runs: int = DEFAULT_CURVE_RUNS, source: str | None = None, image_format: str = "png",
                 shift: list[RunRecord] | None = None, by: str | None = None,
                 histories: Callable[[list[str]], list[RunRecord]] | None = None) -> str:
    """The report of `records` (from `Store.records`) as one HTML page. `compare`: a `compare_report` of the
    same records (computed with its defaults, and `by`, when None); `runs`: at most this many runs in the
    learning curves (per panel); `source`: where the records came from (shown in the header); `image_format`:
    png (data URIs) or svg (inline, text as text); `shift`: the store's shift measurements as records
    (`depthlab.shift.records`), shown in a section of their own when there are any; `by`: a config field that
    varies across the records: verdicts, tables and comparison figures per value of it too (default: the
    `by` of `compare`); `histories`: the records of some run ids with their per-epoch history, when `records`
    leave it out (`Store.records(history=False)`): the learning curves fetch only the runs they may draw.
    Within one `_remembering()` the figures reuse the pairs the comparison formed."""
    with _remembering():
        return _build_report(records, title, compare, runs, source, image_format, shift, by, histories)


def _build_report(records, title, compare, runs, source, image_format, shift, by, histories) -> str:
    if image_format not in REPORT_IMAGE_FORMATS:
        raise DepthlabError(f"image format {image_format!r}: use {' or '.join(REPORT_IMAGE_FORMATS)}")
    by = by if by is not None else (compare or {}).get("by")
    contrast = (compare or {}).get("contrast", "topology")
    if by is not None:
        check_by(records, by, contrast)  # as `depthlab compare --by`, also when nothing pairs
    if compare is None:
        compare = compare_report(records, by=by)
    from depthlab import __version__

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # The CSP lets the page load nothing from anywhere and run only our own script (by hash): an escaping bug
    # elsewhere could still not run injected script.
    digest = base64.b64encode(hashlib.sha256(SORT_JS.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    return _environment().get_template(TEMPLATE).render(
        title=title, csp=csp, css=Markup(CSS), sort_js=Markup(SORT_JS), n_runs=len(records),
        generated=f"generated {now} by depthlab {__version__}", by=by,
        headline=_headline(compare), by_sections=_by_sections(records, compare, by),
        summary=_summary(records, compare, source),
        # the figures always pair the wirings: they split by any other field
        figures=_figures(records, runs, image_format, by if by != "topology" else None, histories),
        paired=_paired_section(compare), bands=_band_section(records, compare, by),
        shift=_shift_section(shift, image_format), runs=_runs_table(records, source))


def load_records(store_path, sweep: str | None = None, *, history: bool = True) -> list[RunRecord]:
    """The records of an existing store (of one sweep when given; without their per-epoch history unless
    `history`); a missing store or no runs is an error."""
    store_path = os.fspath(store_path)
    with Store.existing(store_path, readonly=True) as store:
        records = store.records(sweep=sweep, history=history)
        sweeps = store.sweeps()
    if not records:
        if sweep is not None:
            raise DepthlabError(f"the store {store_path!r} holds no runs of sweep {sweep!r}; its sweeps: "
                                + (", ".join(repr(s) for s in sweeps) or "none"))
        raise DepthlabError(f"the store {store_path!r} holds no runs; start a sweep with `depthlab run`")
    return records


def load_histories(store_path, sweep: str | None, run_ids: list[str]) -> list[RunRecord]:
    """The records of `run_ids` with their per-epoch history."""
    with Store.existing(os.fspath(store_path), readonly=True) as store:
        return store.records(sweep=sweep, run_ids=run_ids)


def write_report(store_path, out_path=DEFAULT_OUT, sweep: str | None = None, *, runs: int = DEFAULT_CURVE_RUNS,
                 title: str | None = None, margin: float | None = None, image_format: str = "png",
                 contrast: str = "topology", allow_mixed_recipes: bool = False, by: str | None = None) -> str:
    """Read the store, write the report to `out_path` (through a temporary file renamed over it once complete);
    returns the path written. `by`: as `build_report`'s, and `depthlab compare --by`."""
    if title is None:
        title = f"depthlab report: {sweep or os.path.basename(os.fspath(store_path))}"
    with collector_paused(), _remembering():  # the figures reuse the comparison's pairs
        records = load_records(store_path, sweep, history=False)  # the curves fetch the few histories they draw
        compare = compare_report(records, margin=margin, by=by, contrast=contrast,
                                 allow_mixed_recipes=allow_mixed_recipes)
        page = build_report(records, title=title, compare=compare, runs=runs,
                            source=os.fspath(store_path), image_format=image_format,
                            shift=load_shift(store_path, sweep), by=by,
                            histories=lambda ids: load_histories(store_path, sweep, ids))
    out_path = os.fspath(out_path)
    try:
        with replaced(out_path) as temp, open(temp, "w", encoding="utf-8") as f:
            f.write(page)
    except OSError as err:
        raise DepthlabError(f"cannot write {out_path}: {err.strerror or err}") from err
    return out_path
