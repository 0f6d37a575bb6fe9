"""The report's figures, one function per figure, each returning a matplotlib `Figure`.

Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no global figure registry to leak
memory across a report, and no GUI backend is ever touched (saving goes through Agg, the SVG or the PDF backend).

Every figure reads the same pairs as `depthlab compare` (`pair_records`), so a point in a scatter is a pair the
statistics counted. Every wiring of a sweep is drawn: the deepest one present (sequential) is the reference,
and each shallower one (the `groups:g` family, parallel) is paired with it; each wiring keeps one colour,
marker and line style in every figure (`wiring_styles`). The comparison figures (`DEFAULT_METRIC`) draw any
final metric and split into a panel per value of a config field (`by`). A figure with nothing to
draw raises `NoData` with a short reason: the HTML report shows the reason in its place, `depthlab plot`
prints it as an error. A panel of more than MAX_POINTS pairs is drawn as a 2-D histogram, one of more runs as
a fixed-seed sample of them; `note(fig)` says which, for the caption.

Saved figures keep their text as text (`render`): SVG `<text>` elements and embedded TrueType fonts in a PDF,
which a vector editor can change, set for the save only.
"""

from __future__ import annotations

import io
import math
import os
import re
from itertools import zip_longest
from typing import NamedTuple

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from depthlab.analysis.compare import (BAND_LABELS, NO_BAND, _once, check_by, pair_records, q_band, run_state,
                                       value_order)
from depthlab.choices import IMAGE_FORMATS as FORMATS
from depthlab.choices import PLOT_KINDS, SHIFT_METHODS, check
from depthlab.choices import PLOT_METRICS as DEFAULT_METRIC  # the comparison figures: they take a metric and by
from depthlab.errors import DepthlabError
from depthlab.outputs import replaced
from depthlab.results.export import varied_fields
from depthlab.records import METRICS, RunRecord, canonical_json
from depthlab.records import finite as store_finite

# The deep stack and the broad layer have fixed colours (the page's CSS names the same two); the groups:g family
# takes GROUP_STYLES in depth order (`wiring_styles`).
TOPOLOGY_COLORS = {"sequential": "#1f5fa8", "parallel": "#e07b00"}
TOPOLOGY_MARKERS = {"sequential": "o", "parallel": "^"}
TOPOLOGY_LINES = {"sequential": "-", "parallel": "--"}
GROUP_STYLES = (("#7b3fa0", "s", "-."), ("#2a9d8f", "D", ":"), ("#c0392b", "v", (0, (5, 1, 1, 1))),
                ("#8c6d31", "P", (0, (1, 1))), ("#d6609f", "X", (0, (3, 1, 1, 1, 1, 1))), ("#17a2b8", "h", (0, (8, 2))))
BAND_MARKERS = dict(zip(BAND_LABELS, ("o", "s", "^", "D")), **{NO_BAND: "X"})
DATASET_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
METRIC_LABELS = {"val_loss": "validation loss", "train_loss": "training loss", "val_acc": "validation accuracy",
                 "train_acc": "training accuracy", "test_loss": "test loss", "test_acc": "test accuracy"}
DPI = 110
MIN_EPOCHS = 2  # a learning curve needs two points: one epoch is a dot, and the final value is in the other figures
MAX_WIDTH, MAX_HEIGHT = 16.0, 26.0  # inches: a figure of many panels shrinks them rather than grow past this
# While saving: SVG text as <text> elements (not glyph outlines), PDF fonts as TrueType (Type 42, not Type 3), so
# a vector editor can change the words; no creation date, so the same figure gives the same file.
SAVE_RC = {"svg.fonttype": "none", "pdf.fonttype": 42}
SAVE_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}
_GROUPS = re.compile(r"^groups:(\d+)$")
# Above this many points in one panel, markers pile into a blot that hides how many lie where, and drawing them
# takes most of a large sweep's report: a panel of pairs becomes a 2-D histogram (hexagonal bins, colour = count)
# and a panel of runs shows a random sample of this many, drawn with SAMPLE_SEED (the same page every time).
MAX_POINTS = 5_000
SAMPLE_SEED = 0
HEX_GRID = 40  # hexagons across a binned panel: about one per 0.1 inch of a 4.6-inch panel


class NoData(DepthlabError):
    """A figure has nothing to draw; the message says why."""


class Style(NamedTuple):
    color: str
    marker: str
    line: object  # a matplotlib line style: a name or (offset, dashes)


def _text(value) -> str:
    """A label from a record value: matplotlib would read a pair of `$` as mathematics (and may fail on it)."""
    return str(value).replace("$", r"\$")


def finite(value):
    """A value as a float, or None when missing, not a number, or not finite."""
    try:
        return store_finite(value)
    except (TypeError, ValueError):
        return None


def _wide_range(values) -> bool:
    """Positive values spanning more than a factor 5: shown on a log scale."""
    return min(values) > 0 and max(values) / min(values) > 5


def _dataset_colors(datasets) -> dict:
    return {d: DATASET_COLORS[i % len(DATASET_COLORS)] for i, d in enumerate(sorted(datasets))}


# -- wirings and splits -----------------------------------------------------------------------------------------


def wiring_depth(topology) -> tuple:
    """Sort key of a wiring, deep to shallow: sequential (g = n groups), groups:g by decreasing g, parallel
    (g = 1), then any other by name."""
    name = str(topology)
    match = _GROUPS.match(name)
    if name == "sequential":
        return (0, 0, "")
    if match:
        return (1, -int(match.group(1)), "")
    return (2, 0, "") if name == "parallel" else (3, 0, name)


def wirings(records: list[RunRecord]) -> list[str]:
    """The wirings (topology values) of the records, deep to shallow (found once per list of records within a
    comparison's `_remembering()`, as the report draws its figures)."""
    return list(_once(("wirings",), records, lambda: sorted(
        {str(r.config["topology"]) for r in records if r.config.get("topology") is not None}, key=wiring_depth)))


def wiring_styles(names) -> dict[str, Style]:
    """{wiring: Style} for the given wirings (in depth order): sequential and parallel their own, the others the
    next of GROUP_STYLES."""
    styles, k = {}, 0
    for name in names:
        if name in TOPOLOGY_COLORS:
            styles[name] = Style(TOPOLOGY_COLORS[name], TOPOLOGY_MARKERS[name], TOPOLOGY_LINES[name])
        else:
            styles[name] = Style(*GROUP_STYLES[k % len(GROUP_STYLES)])
            k += 1
    return styles


def split(records: list[RunRecord], by: str | None) -> list[tuple[str | None, list[RunRecord]]]:
    """(label, records) per value of the config field `by`, in value order, the label "by = value"; without
    `by`, one group of every record labelled None. Pairs differ only in the wiring, so each pair is in one group."""
    if by is None:
        return [(None, records)]
    groups: dict[str, tuple] = {}
    for rec in records:
        value = rec.config.get(by)
        groups.setdefault(canonical_json(value), (value, []))[1].append(rec)
    ordered = sorted(groups.values(), key=lambda vr: value_order(vr[0]))
    return [(f"{by} = {value}", recs) for value, recs in ordered]


def _panel_title(*parts) -> str:
    return _text(" · ".join(str(p) for p in parts if p is not None))


def _panels(rows: int, cols: int, one: tuple, each: tuple, wrap: int = 3) -> tuple[Figure, np.ndarray]:
    """A constrained figure of rows × cols panels (rows: the values of `by`; columns: datasets, say), as an array
    of axes indexed [row][col]: `one` inches for a single panel, `each` per panel otherwise. With one column the
    rows stand side by side instead, `wrap` to a line, so that a split figure stays about as wide as it is high."""
    if cols == 1 and rows > 1 and wrap > 1:
        across = min(rows, wrap)
        fig, grid = _panels(math.ceil(rows / across), across, one, each, wrap=1)
        flat = list(grid.ravel())
        for ax in flat[rows:]:
            ax.remove()
        axes = np.empty((rows, 1), dtype=object)
        axes[:, 0] = flat[:rows]
        return fig, axes
    size = one if rows * cols == 1 else (min(each[0] * cols, MAX_WIDTH), min(each[1] * rows, MAX_HEIGHT))
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _empty(ax, why: str) -> None:
    """A panel with nothing to draw says so."""
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#777777", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def note(fig: Figure) -> str | None:
    """What the figure binned or sampled to stay readable (a sentence for its caption), or None."""
    return getattr(fig, "_depthlab_note", None)


def _noted(fig: Figure, text: str) -> Figure:
    fig._depthlab_note = text
    return fig


def sample(items: list, k: int | None = None) -> list:
    """At most `k` (default MAX_POINTS) of `items`, drawn at random with SAMPLE_SEED, in their order (all of
    them when few)."""
    k = MAX_POINTS if k is None else k
    if len(items) <= k:
        return items
    keep = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(items), size=k, replace=False))
    return [items[i] for i in keep]


# -- the data behind the figures (plain lists, so tests can check them) ------------------------------------------


def used_pairs(records: list[RunRecord], metric: str = "val_loss",
               order: list[str] | None = None) -> list[tuple[RunRecord, RunRecord]]:
    """(deep, shallow) pairs: the deepest wiring of `order` (default: the records' `wirings`) against each other
    one, whose runs are both done, learned and did not blow up (`run_state`), with a finite `metric`: the pairs
    the paired statistics of `compare` use for that metric, wiring by wiring, each in record order."""
    order = wirings(records) if order is None else order
    # within `_remembering()` (a report) once per metric: three figures and the curves' choice read them
    return list(_once(("used-pairs", metric, tuple(order)), records, lambda: _used_pairs(records, metric, order)))


def _used_pairs(records, metric, order):
    out = []
    for other in order[1:]:
        pairs, _ = pair_records(records, "topology", order[0], other)
        out += [(s, p) for s, p in pairs
                if run_state(s) == "done" and run_state(p) == "done"
                and finite(s.metric(metric)) is not None and finite(p.metric(metric)) is not None]
    return out


def scatter_points(records: list[RunRecord], metric: str = "val_loss", order: list[str] | None = None) -> list[dict]:
    """One point per used pair: x = the deep wiring's, y = the shallow one's final `metric`, with the dataset,
    Q band, both wirings and both run ids."""
    return [dict(x=float(s.metric(metric)), y=float(p.metric(metric)), dataset=str(s.config.get("dataset")),
                 band=q_band(s.q), reference=str(s.config.get("topology")), wiring=str(p.config.get("topology")),
                 deep=s.run_id, shallow=p.run_id)
            for s, p in used_pairs(records, metric, order)]


def winrate_cells(records: list[RunRecord], metric: str = "val_loss", order: list[str] | None = None) -> dict:
    """{dataset: {shallow wiring: {(blocks, width): (its wins, pairs)}}} against the deepest wiring: a win is a
    strictly lower `metric` (strictly higher for an accuracy)."""
    higher_is_better = metric.endswith("_acc")
    out: dict[str, dict] = {}
    for s, p in used_pairs(records, metric, order):
        d = float(p.metric(metric)) - float(s.metric(metric))
        win = d > 0 if higher_is_better else d < 0
        cells = out.setdefault(str(s.config.get("dataset")), {}).setdefault(str(p.config.get("topology")), {})
        key = (s.config.get("blocks"), s.config.get("width"))
        wins, n = cells.get(key, (0, 0))
        cells[key] = (wins + int(win), n + 1)
    return out


def curve(rec: RunRecord, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of the run's per-epoch `metric`, the epochs that have a finite one."""
    return [(h.get("epoch", k + 1), float(h[metric])) for k, h in enumerate(rec.history)
            if finite(h.get(metric)) is not None]


def curve_runs(records: list[RunRecord], n: int = 8, metric: str = "val_loss",
               order: list[str] | None = None) -> list[tuple[RunRecord, RunRecord | None, float]]:
    """The pairs with the largest |shallow − deep| final `metric`, taken in turn from each shallower wiring (so
    that every wiring shows), at most `n` runs in all, as (deep, shallow, d); runs with fewer than MIN_EPOCHS
    epochs of `metric` history are skipped. Without pairs: the first `n` done runs with such a history, as
    (run, None, nan)."""
    drawable = lambda rec: len(curve(rec, metric)) >= MIN_EPOCHS
    chosen, count = [], 0
    pairs = _in_turn([(s, p) for s, p in used_pairs(records, metric, order) if drawable(s) and drawable(p)], metric)
    for s, p in pairs:
        if count >= n:
            break
        d = float(p.metric(metric)) - float(s.metric(metric))
        chosen.append((s, p if count + 2 <= n else None, d))
        count += 2
    if not pairs:
        singles = [r for r in records if r.status == "done" and drawable(r)][:n]
        chosen = [(r, None, float("nan")) for r in singles]
    return chosen


def _in_turn(pairs: list[tuple], metric: str) -> list[tuple]:
    """(deep, shallow) `pairs` by largest |shallow − deep| final `metric` first, taken in turn from each shallower
    wiring, so that every wiring shows (`curve_runs`, `curve_candidates`)."""
    pairs = sorted(pairs, key=lambda sp: -abs(float(sp[1].metric(metric)) - float(sp[0].metric(metric))))
    per_wiring: dict[str, list] = {}
    for s, p in pairs:
        per_wiring.setdefault(str(p.config.get("topology")), []).append((s, p))
    return [sp for turn in zip_longest(*per_wiring.values()) for sp in turn if sp is not None]


CANDIDATES = 2  # curve_candidates picks this many times the runs drawn: a run can have too few finite values


def curve_candidates(records: list[RunRecord], n: int = 8, metric: str = "val_loss", by: str | None = None,
                     order: list[str] | None = None) -> list[str]:
    """The ids of the runs `learning_curves` may draw, judged from records without their history (by the
    epochs they ran): what a report fetches the histories of, instead of every run's. Per value of `by`: the
    pairs of `curve_runs`' order, CANDIDATES × `n` pairs of them; without pairs, the first such done runs; when
    no run ran MIN_EPOCHS epochs, the done run that ran the most (the figure says how many)."""
    order = wirings(records) if order is None else order
    ran = lambda rec: (rec.epochs_run or 0) >= MIN_EPOCHS
    ids: list[str] = []
    for _, subset in split(records, by):
        turns = _in_turn([(s, p) for s, p in used_pairs(subset, metric, order) if ran(s) and ran(p)], metric)
        ids += [rec.run_id for sp in turns[:CANDIDATES * n] for rec in sp]
        if not turns:
            ids += [r.run_id for r in [r for r in subset if r.status == "done" and ran(r)][:CANDIDATES * n]]
    done = [r for r in records if r.status == "done"]
    if not ids and done:
        ids.append(max(done, key=lambda r: r.epochs_run or 0).run_id)
    # a run of every wiring and value of `by`, drawn or not, so that the styles and panels are those of all runs
    ids += [next(r for r in records if str(r.config.get("topology")) == w).run_id for w in order]
    ids += [subset[0].run_id for _, subset in split(records, by)]
    return list(dict.fromkeys(ids))


# -- figures --------------------------------------------------------------------------------------------------


def _no_pairs(order: list[str], metric: str) -> NoData:
    names = order if len(order) > 1 else list(TOPOLOGY_COLORS)
    return NoData(f"no {'/'.join(names)} pairs with both runs done and a finite {metric}")


def _challenger(order: list[str]) -> str:
    """How a figure names the shallow side: the wiring itself when there is one."""
    return order[1] if len(order) == 2 else "the shallower wiring"


def scatter_pairs(records: list[RunRecord], metric: str = "val_loss", by: str | None = None) -> Figure:
    """The deepest wiring's final `metric` (x) against each shallower wiring's (y), one point per matched pair;
    colour = the shallow wiring, marker = Q band, the line y = x (below it, the shallow wiring has the lower
    value); one panel per dataset and value of `by`."""
    order = wirings(records)
    styles = wiring_styles(order)
    rows = [(label, scatter_points(subset, metric, order)) for label, subset in split(records, by)]
    points = [pt for _, pts in rows for pt in pts]
    if not points:
        raise _no_pairs(order, metric)
    datasets = sorted({pt["dataset"] for pt in points})
    fig, axes = _panels(len(rows), len(datasets), (5.6, 5.0), (4.6, 4.2))
    name = METRIC_LABELS.get(metric, metric)
    shown = [w for w in order[1:] if any(pt["wiring"] == w for pt in points)]
    bands = [b for b in BAND_MARKERS if any(pt["band"] == b for pt in points)]
    binned = any(sum(pt["dataset"] == d for pt in pts) > MAX_POINTS for _, pts in rows for d in datasets)
    for i, (label, pts) in enumerate(rows):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            sel = [pt for pt in pts if pt["dataset"] == dataset]
            title = _panel_title(label, dataset if len(datasets) > 1 else None,
                                 f"{len(sel)} pair{'s' * (len(sel) != 1)}")
            if not sel:
                _empty(ax, "no pairs")
                ax.set_title(title, fontsize=9)
                continue
            _scatter_panel(ax, sel, shown, bands, styles, binned)
            ax.set_xlabel(_text(f"{order[0]}: final {name}"))
            ax.set_ylabel(_text(f"{_challenger(order)}: final {name}"))
            ax.set_title(title, fontsize=9)
    better = "above" if metric.endswith("_acc") else "below"
    title = _text(f"Final {name}, {len(points)} matched pair{'s' * (len(points) != 1)}\n"
                  f"({better} the line y = x: {_challenger(order)} better)")
    if axes.size == 1:
        axes[0][0].set_title(_text(f"{datasets[0]}: ") + title, fontsize=10)
    else:
        fig.suptitle(title, fontsize=10)
    if binned:
        first = next(ax for ax in axes.ravel() if ax.collections)
        first.legend(handles=[Line2D([], [], color="#555555", linestyle="--", label="y = x")], loc="lower right",
                     fontsize=8)
        return _noted(fig, f"Over {MAX_POINTS:,} pairs in a panel: each panel is a 2-D histogram of its pairs "
                           "(hexagonal bins, colour = pairs per bin on a log scale, every wiring and Q band "
                           "together) instead of one point per pair.")
    handles = [Line2D([], [], marker="o", linestyle="", color=styles[w].color, label=_text(w)) for w in shown]
    first = next(ax for ax in axes.ravel() if ax.collections)  # a panel with points holds the legends
    leg = first.legend(handles=handles, title=f"against {_text(order[0])}", loc="upper left", fontsize=8,
                       title_fontsize=8)
    first.add_artist(leg)
    handles = [Line2D([], [], marker=BAND_MARKERS[b], linestyle="", color="#444444", label=b) for b in bands]
    handles.append(Line2D([], [], color="#555555", linestyle="--", label="y = x"))
    first.legend(handles=handles, title="Q band", loc="lower right", fontsize=8, title_fontsize=8)
    return fig


def _scatter_panel(ax, points: list[dict], shown: list[str], bands: list[str], styles: dict,
                   binned: bool = False) -> None:
    values = [pt["x"] for pt in points] + [pt["y"] for pt in points]
    lo, hi = min(values), max(values)
    log = _wide_range(values)  # datasets at very different loss levels: each cluster stays readable
    if binned:
        scale = "log" if log else "linear"
        image = ax.hexbin([pt["x"] for pt in points], [pt["y"] for pt in points], gridsize=HEX_GRID, bins="log",
                          mincnt=1, cmap="viridis", xscale=scale, yscale=scale, linewidths=0.2, zorder=3)
        ax.figure.colorbar(image, ax=ax, label="pairs per bin", shrink=0.8)
        for axis in (ax.xaxis, ax.yaxis):  # hexbin's log axes label minor ticks too, which overlap
            axis.set_minor_formatter(NullFormatter())
    for wiring in shown if not binned else ():
        for band in bands:
            sel = [pt for pt in points if pt["wiring"] == wiring and pt["band"] == band]
            if sel:
                ax.scatter([pt["x"] for pt in sel], [pt["y"] for pt in sel], color=styles[wiring].color,
                           marker=BAND_MARKERS[band], s=36, alpha=0.8, edgecolors="white", linewidths=0.5, zorder=3)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = lo / 1.15, hi * 1.15
    else:
        pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1e-3)
        lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="#555555", linewidth=1, linestyle="--", zorder=2)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.grid(True, alpha=0.3)


def loss_vs_q(records: list[RunRecord], metric: str = "val_loss", by: str | None = None) -> Figure:
    """Final `metric` of the done runs against Q (log scale), every wiring, one panel per dataset and value of
    `by`; the line joins the mean at each Q value, the dotted verticals are the Q band edges."""
    runs = [r for r in records if r.status == "done" and r.config.get("topology") is not None
            and finite(r.metric(metric)) is not None and (finite(r.q) or 0) > 0]
    if not runs:
        raise NoData(f"no done run with a wiring, a Q and a finite {metric}")
    styles = wiring_styles(wirings(runs))
    datasets = sorted({str(r.config.get("dataset")) for r in runs})
    rows = split(runs, by)
    fig, axes = _panels(len(rows), len(datasets), (5.6, 4.6), (5.0, 4.2))
    name = METRIC_LABELS.get(metric, metric)
    sampled = False
    for i, (label, subset) in enumerate(rows):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            sel = [r for r in subset if str(r.config.get("dataset")) == dataset]
            ax.set_title(_panel_title(label, dataset), fontsize=10)
            if not sel:
                _empty(ax, "no done runs")
                continue
            _q_panel(ax, sel, metric, styles)
            sampled |= len(sel) > MAX_POINTS
            ax.set_ylabel(f"final {name}")
    if axes.size == 1:
        axes[0][0].set_title(_text(f"Final {name} against Q: {datasets[0]}"), fontsize=10)
    else:
        fig.suptitle(f"Final {name} against Q", fontsize=11)
    if sampled:
        _noted(fig, f"Over {MAX_POINTS:,} runs in a panel: its points are a random sample of {MAX_POINTS:,} of them "
                    f"(seed {SAMPLE_SEED}); the lines are means over every run.")
    return fig


def _q_panel(ax, runs: list[RunRecord], metric: str, styles: dict) -> None:
    qs_all = []
    drawn = {id(r) for r in sample(runs)}
    for wiring, style in styles.items():
        sel = [r for r in runs if str(r.config.get("topology")) == wiring]
        if not sel:
            continue
        q = np.array([float(r.q) for r in sel])
        y = np.array([float(r.metric(metric)) for r in sel])
        qs_all.extend(q)
        shown = np.array([id(r) in drawn for r in sel])
        ax.scatter(q[shown], y[shown], color=style.color, s=16, alpha=0.45, marker=style.marker, linewidths=0)
        levels = np.unique(q)
        ax.plot(levels, [y[q == v].mean() for v in levels], color=style.color, linewidth=1.8, marker=style.marker,
                markersize=4, label=_text(f"{wiring} (mean, n={len(sel)})"))
    ax.set_xscale("log")
    lo, hi = min(qs_all) / 1.5, max(qs_all) * 1.5
    ax.set_xlim(lo, hi)
    for edge in (1, 3, 10):
        if lo < edge < hi:
            ax.axvline(edge, color="#999999", linestyle=":", linewidth=1)
    # plain numbers on the 1-3-10 grid of the band edges, not powers of ten
    ticks = [t for e in range(-4, 7) for t in (10.0 ** e, 3 * 10.0 ** e) if lo <= t <= hi]
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    if len(ticks) >= 2:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:  # a narrow range: the minor ticks carry the labels, plain too
        ax.xaxis.set_minor_formatter(plain)
    ax.xaxis.set_major_formatter(plain)
    ax.set_xlabel("Q = training examples × outputs / parameters")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")


def _pair_label(rec: RunRecord, fields: list[str]) -> str:
    text = " ".join(f"{f}={rec.config.get(f)}" for f in fields) or str(rec.run_id)
    return _text(text if len(text) <= 48 else text[:45] + "...")


def learning_curves(records: list[RunRecord], n: int = 8, metric: str = "val_loss", by: str | None = None) -> Figure:
    """`metric` per epoch for at most `n` runs per panel: the pairs with the largest final |difference|, one
    colour per pair and one line style per wiring; one panel per value of `by`. Only runs with at least
    MIN_EPOCHS epochs of history are drawn."""
    order = wirings(records)
    styles = wiring_styles(order)
    rows = [(label, curve_runs(subset, n, metric, order)) for label, subset in split(records, by)]
    if not any(chosen for _, chosen in rows):
        raise NoData(_why_no_curves(records, metric))
    fields = [f for f in varied_fields(records) if f not in ("topology", by)]
    fig, axes = _panels(len(rows), 1, (10.0, 4.4), (10.0, 3.6), wrap=1)
    name = METRIC_LABELS.get(metric, metric)
    drawn = set()
    for (label, chosen), ax in zip(rows, axes[:, 0]):
        if not chosen:
            _empty(ax, f"no run with {MIN_EPOCHS} or more epochs of {metric}")
            ax.set_title(_panel_title(label), fontsize=10)
            continue
        for i, (deep, shallow, d) in enumerate(chosen):
            color = DATASET_COLORS[i % len(DATASET_COLORS)]
            text = _pair_label(deep, fields)
            if shallow is not None and len(order) > 2:  # which of the shallower wirings the pair holds
                text += _text(f" vs {shallow.config.get('topology')}")
            text += "" if math.isnan(d) else f"  (d = {d:+.3g})"
            for k, rec in enumerate((deep, shallow)):
                if rec is None:
                    continue
                wiring = str(rec.config.get("topology"))
                drawn.add(wiring)
                points = curve(rec, metric)
                ax.plot([e for e, _ in points], [v for _, v in points], linestyle=styles[wiring].line, color=color,
                        marker="o", markersize=3, linewidth=1.5, label=text if k == 0 else None)
        values = [v for line in ax.get_lines() for v in line.get_ydata()]
        if _wide_range(values):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        kind = "pairs with the largest |final difference|" if not math.isnan(chosen[0][2]) else "runs (no pairs)"
        ax.set_title(_panel_title(label, f"{name.capitalize()} per epoch: {kind}"), fontsize=10)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    handles = [Line2D([], [], color="#444444", linestyle=styles[w].line, label=_text(w)) for w in order if w in drawn]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=max(len(handles), 1), frameon=False)
    return fig


def _why_no_curves(records: list[RunRecord], metric: str) -> str:
    done = [r for r in records if r.status == "done"]
    longest = max((len(curve(r, metric)) for r in done), default=0)
    if longest == 0:
        return f"no done run with a per-epoch history of {metric}"
    return (f"the done runs have at most {longest} epoch{'s' * (longest != 1)} of {metric} history: a learning curve "
            f"needs {MIN_EPOCHS} (the final values are in the other figures)")


def winrate_heatmap(records: list[RunRecord], metric: str = "val_loss", by: str | None = None) -> Figure:
    """Per dataset and shallow wiring, over blocks × width: the fraction of pairs where the shallow wiring has
    the better final `metric` than the deepest one (lower loss, higher accuracy), with the counts in each cell;
    one row of panels per value of `by`."""
    order = wirings(records)
    rows = [(label, winrate_cells(subset, metric, order)) for label, subset in split(records, by)]
    if not any(cells for _, cells in rows):
        raise _no_pairs(order, metric)
    columns = sorted({(dataset, wiring) for _, cells in rows for dataset, per in cells.items() for wiring in per},
                     key=lambda dw: (dw[0], wiring_depth(dw[1])))
    fig, axes = _panels(len(rows), len(columns), (5.6, 4.6), (4.4, 3.8))
    image = None
    for i, (label, cells) in enumerate(rows):
        for j, (dataset, wiring) in enumerate(columns):
            ax = axes[i][j]
            ax.set_title(_panel_title(label, dataset, f"{wiring} vs {order[0]}"), fontsize=9)
            grid = cells.get(dataset, {}).get(wiring)
            if not grid:
                _empty(ax, "no pairs")
                continue
            image = _winrate_panel(ax, grid)
    better = "higher" if metric.endswith("_acc") else "lower"
    fig.colorbar(image, ax=axes.ravel().tolist(), label=f"win rate ({better} final {metric})", shrink=0.9)
    fig.suptitle(_text(f"Share of pairs where {_challenger(order)} has the {better}\n"
                       f"final {METRIC_LABELS.get(metric, metric)}"), fontsize=10)
    return fig


def _winrate_panel(ax, grid: dict):
    blocks = sorted({k[0] for k in grid}, key=_order)
    widths = sorted({k[1] for k in grid}, key=_order)
    rate = np.full((len(blocks), len(widths)), np.nan)
    for (b, w), (wins, n) in grid.items():
        rate[blocks.index(b), widths.index(w)] = wins / n
    image = ax.imshow(np.ma.masked_invalid(rate), cmap="RdBu_r", vmin=0, vmax=1, origin="lower", aspect="auto")
    for (b, w), (wins, n) in grid.items():
        r = wins / n
        ax.text(widths.index(w), blocks.index(b), f"{r:.2f}\n{wins}/{n}", ha="center", va="center",
                fontsize=8, color="white" if abs(r - 0.5) > 0.3 else "black")
    ax.set_xticks(range(len(widths)), [str(w) for w in widths])
    ax.set_yticks(range(len(blocks)), [str(b) for b in blocks])
    ax.set_xlabel("width (channels)")
    ax.set_ylabel("blocks (depth)")
    return image


def _order(value):
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def prune_profile(rows: list[dict], density: float) -> Figure:
    """Density kept in each block against its position, one line per pruning method, the deep wiring solid and
    the shallow one dashed (rows as `depthlab prune` computes them)."""
    if not rows:
        raise NoData("no pruning profile to draw")
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    colors = _dataset_colors({r["method"] for r in rows})  # one colour per method, one line style per wiring
    styles = wiring_styles(sorted({str(r["topology"]) for r in rows}, key=wiring_depth))
    for r in rows:
        ax.plot(range(len(r["blocks"])), r["blocks"], linestyle=styles[str(r["topology"])].line, marker="o",
                markersize=3, color=colors[r["method"]], label=_text(f"{r['method']} ({r['topology']})"))
    if density == density:  # not NaN: one density for every line
        ax.axhline(density, color="#999999", linestyle=":", linewidth=1)
    ax.set_xlabel("block position (input side first)")
    ax.set_ylabel("density kept in the block")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, alpha=0.3, which="both")
    what = f"to density {density:g}" if density == density else "(mean over seeds)"
    ax.set_title(f"Pruning at initialisation {what}: solid deep, dashed shallow", fontsize=10)
    return fig


def prune_rows(records: list[RunRecord]) -> list[dict]:
    """The mean block densities per (prune method, wiring) of the done pruned runs, from the layer densities
    each recorded (a block's layers averaged alike)."""
    groups: dict[tuple, list[list[float]]] = {}
    for rec in records:
        dens = rec.metric("layer_density")
        if rec.status != "done" or not isinstance(dens, dict):
            continue
        blocks = sorted({int(n.split(".")[0][5:]) for n in dens if n.startswith("block")})
        profile = [float(np.mean([v for n, v in dens.items() if n.startswith(f"block{i}.")])) for i in blocks]
        cfg = rec.config
        groups.setdefault((str(cfg.get("prune")), str(cfg.get("topology")), cfg.get("density")), []).append(profile)
    return [dict(method=f"{m} d={d:g}", topology=t, blocks=list(np.mean(p, axis=0)))
            for (m, t, d), p in sorted(groups.items(), key=lambda kv: str(kv[0]))]


def erf_points(records: list[RunRecord]) -> list[dict]:
    """One point per done run that recorded its receptive fields: theoretical (x) against effective (50% and
    90% of the gradient mass), with its branch, kernel and topology."""
    out = []
    for rec in records:
        theory, e50, e90 = (finite(rec.metric(k)) for k in ("receptive_field", "erf50", "erf90"))
        if rec.status == "done" and None not in (theory, e50, e90):
            cfg = rec.config
            out.append(dict(theory=theory, erf50=e50, erf90=e90, topology=str(cfg.get("topology")),
                            label=f"{cfg.get('branch', 'conv')} k{cfg.get('kernel')}"))
    return out


def receptive_fields(records: list[RunRecord]) -> Figure:
    """Effective against theoretical receptive field per run (filled: 90% of the mass, hollow: 50%), one colour
    per branch type and kernel, one marker per wiring: a large kernel reaches far in one shallow layer."""
    every = erf_points(records)
    if not every:
        raise NoData("no done run recorded its receptive fields (runs trained before they were recorded?)")
    points = sample(every)
    fig = Figure(figsize=(5.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    labels = sorted({p["label"] for p in points})
    colors = _dataset_colors(labels)  # one colour per branch type and kernel, one marker per wiring
    styles = wiring_styles(sorted({p["topology"] for p in points}, key=wiring_depth))
    markers = {t: s.marker for t, s in styles.items()}
    groups: dict[tuple, list[dict]] = {}
    for p in points:  # one scatter per colour and marker: a call per point is slow for a large sweep
        groups.setdefault((p["label"], p["topology"]), []).append(p)
    for (lab, topology), sel in groups.items():
        theory = [p["theory"] for p in sel]
        ax.scatter(theory, [p["erf90"] for p in sel], color=colors[lab], marker=markers[topology], s=30, alpha=0.7)
        ax.scatter(theory, [p["erf50"] for p in sel], facecolors="none", edgecolors=colors[lab],
                   marker=markers[topology], s=30)
    top = max(max(p["theory"], p["erf90"]) for p in points) * 1.05
    ax.plot([0, top], [0, top], "--", color="#999999", linewidth=1)
    ax.set_xlabel("theoretical receptive field (input pixels)")
    ax.set_ylabel("effective receptive field (side, pixels)")
    handles = [Line2D([], [], color=colors[lab], marker="o", linestyle="", label=_text(lab)) for lab in labels]
    handles += [Line2D([], [], color="#444444", marker=m, linestyle="", label=_text(t)) for t, m in markers.items()]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    ax.set_title("Receptive fields: filled 90% of the gradient mass, hollow 50%", fontsize=10)
    if len(points) < len(every):
        _noted(fig, f"{len(every):,} runs: the points are a random sample of {len(points):,} (seed {SAMPLE_SEED}).")
    return fig


# How each figure of `depthlab plot KIND` is drawn, keyed and ordered as depthlab.choices.PLOT_KINDS (which the
# How each figure of `depthlab plot KIND` is drawn, keyed and ordered as depthlab.choices.PLOT_KINDS (which the
# CLI reads without importing matplotlib; tests/cli/test_choices.py keeps the two equal): (records, n, metric, by).
KINDS = {
    "scatter-val": lambda records, n, metric, by: scatter_pairs(records, metric, by),
    "scatter-train": lambda records, n, metric, by: scatter_pairs(records, metric, by),
    "loss-vs-q": lambda records, n, metric, by: loss_vs_q(records, metric, by),
    "curves": lambda records, n, metric, by: learning_curves(records, n, metric, by),
    "winrate": lambda records, n, metric, by: winrate_heatmap(records, metric, by),
    "erf": lambda records, n, metric, by: receptive_fields(records),
    "prune": lambda records, n, metric, by: prune_profile(prune_rows(records), float("nan")),
}
# Figures the report shows only when the sweep varies one of these fields.
CONDITIONAL = {"erf": ("kernel", "branch", "reparam"), "prune": ("prune", "density", "prune_structure")}
_CONDITIONAL_FIELDS = tuple(dict.fromkeys(f for fields in CONDITIONAL.values() for f in fields))


class Configured(NamedTuple):
    config: dict


def conditional_config(rec: RunRecord) -> Configured:
    """The record's config fields among CONDITIONAL's (those it has), to tell which of them vary
    (`varied_fields` reads only a record's config)."""
    return Configured({f: rec.config[f] for f in _CONDITIONAL_FIELDS if f in rec.config})


def figure(kind: str, records: list[RunRecord], n: int = 8, *, metric: str | None = None,
           by: str | None = None) -> Figure:
    """The figure of one KIND (see `KINDS`): a comparison figure draws `metric` (default: its
    `DEFAULT_METRIC`), a panel per value of the config field `by` (one that varies across the
    records, not the wiring). Raises NoData when it has nothing to draw, SpecError for a bad metric or field."""
    if kind not in PLOT_KINDS:
        raise DepthlabError(f"unknown figure {kind!r}; choose one of {', '.join(PLOT_KINDS)}")
    if kind not in DEFAULT_METRIC and (metric is not None or by is not None):
        raise DepthlabError(f"the {kind} figure draws no metric and has no panels to split: --metric and --by "
                            f"apply to {', '.join(DEFAULT_METRIC)}")
    if metric is not None:
        check("metric", metric, METRICS)
    if by is not None:
        check_by(records, by)  # as `depthlab compare --by` (the figures contrast the wirings)
    return KINDS[kind](records, n, metric or DEFAULT_METRIC.get(kind), by)


def image_format(path) -> str:
    """One of FORMATS (png, svg, pdf), from the file name's extension."""
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if ext not in FORMATS:
        raise DepthlabError(f"{os.fspath(path)}: cannot tell the image format; use a "
                            f"{' or '.join('.' + f for f in FORMATS)} file name")
    return ext


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as a PNG, SVG or PDF file's bytes, its text kept as text (SAVE_RC, for this save only)."""
    buf = io.BytesIO()
    with matplotlib.rc_context(SAVE_RC):
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=SAVE_METADATA.get(fmt))
    return buf.getvalue()


def svg_element(fig: Figure) -> str:
    """The figure as an <svg> element to put inside an HTML page (no XML prolog), its text as <text>."""
    svg = render(fig, "svg").decode("utf-8")
    return svg[svg.index("<svg"):]


def save(fig: Figure, path) -> str:
    """Write `fig` to `path` as PNG, SVG or PDF, chosen by the extension, through a temporary file renamed over
    it once complete. Returns the path."""
    path = os.fspath(path)
    data = render(fig, image_format(path))
    try:
        with replaced(path) as temp:
            temp.write_bytes(data)
    except OSError as err:
        raise DepthlabError(f"cannot write {path}: {err.strerror or err}") from err
    return path


# -- covariate shift (the measurements of `depthlab shift`, as records from depthlab.shift.records) ---------------


def shift_cells(records: list[RunRecord]) -> dict:
    """{(topology, eval batch size): {(corruption, method): (mean test error, measurements)}}: the error
    1 - test_acc of the done measurements, averaged over runs, seeds and severities. Diverged measurements
    (no accuracy) are left out."""
    sums: dict = {}
    for rec in records:
        acc, cfg = finite(rec.test_acc), rec.config
        if rec.status != "done" or acc is None:
            continue
        panel = sums.setdefault((str(cfg.get("topology")), cfg.get("eval_batch_size")), {})
        key = (str(cfg.get("corruption")), str(cfg.get("method")))
        total, n = panel.get(key, (0.0, 0))
        panel[key] = (total + 1 - acc, n + 1)
    return {panel: {k: (total / n, n) for k, (total, n) in cells.items()} for panel, cells in sums.items()}


def _method_order(method: str):
    base = method.split(":")[0].removesuffix("_episodic")
    known = tuple(SHIFT_METHODS)
    return (known.index(base) if base in known else len(known), method)


def shift_heatmap(records: list[RunRecord]) -> Figure:
    """Corruption × method test error under shift, one panel per wiring (columns) and evaluation batch size
    (rows), each cell the mean error over runs, seeds and severities."""
    cells = shift_cells(records)
    if not cells:
        raise NoData("no done shift measurement (run `depthlab shift`)")
    topologies = sorted({t for t, _ in cells}, key=wiring_depth)
    batches = sorted({b for _, b in cells}, key=_order)
    corruptions = sorted({c for panel in cells.values() for c, _ in panel})
    methods = sorted({m for panel in cells.values() for _, m in panel}, key=_method_order)
    vmax = max(e for panel in cells.values() for e, _ in panel.values()) or 1.0
    width = min(2.4 + 1.0 * len(methods), 6.0) * len(topologies)
    height = min(1.2 + 0.28 * len(corruptions), 7.0) * len(batches)
    fig = Figure(figsize=(min(width + 1.2, 14.0), min(height, 22.0)), layout="constrained")
    axes = fig.subplots(len(batches), len(topologies), squeeze=False)
    image = None
    for i, batch in enumerate(batches):
        for j, topology in enumerate(topologies):
            ax = axes[i][j]
            panel = cells.get((topology, batch), {})
            grid = np.full((len(corruptions), len(methods)), np.nan)
            for (c, m), (err, _) in panel.items():
                grid[corruptions.index(c), methods.index(m)] = err
            image = ax.imshow(np.ma.masked_invalid(grid), cmap="magma_r", vmin=0, vmax=vmax, aspect="auto")
            if len(corruptions) * len(methods) <= 200:
                for (c, m), (err, _) in panel.items():
                    ax.text(methods.index(m), corruptions.index(c), f"{100 * err:.0f}", ha="center", va="center",
                            fontsize=7, color="white" if err > 0.6 * vmax else "black")
            ax.set_xticks(range(len(methods)), [_text(m) for m in methods], rotation=35, ha="right", fontsize=8)
            ax.set_yticks(range(len(corruptions)), [_text(c) for c in corruptions], fontsize=8)
            ax.set_title(f"{_text(topology)}, batch {batch}", fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="test error under shift (1 - accuracy)", shrink=0.8)
    fig.suptitle("Test error per corruption and test-time method (cells: %)", fontsize=10)
    return fig
