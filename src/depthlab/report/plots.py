"""The report's figures, one function per figure, each returning a matplotlib `Figure`.

Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no global figure registry to leak
memory across a report, and no GUI backend is ever touched (saving goes through Agg or the SVG backend).

Every figure reads the same pairs as `depthlab compare` (`pair_records`), so a point in a scatter is a pair the
statistics counted. A figure with nothing to draw raises `NoData` with a short reason: the HTML report shows
the reason in its place, `depthlab plot` prints it as an error.
"""

from __future__ import annotations

import math
import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from depthlab.analysis.compare import BAND_LABELS, NO_BAND, pair_records, q_band, run_state
from depthlab.choices import IMAGE_FORMATS as FORMATS
from depthlab.choices import PLOT_KINDS, SHIFT_METHODS
from depthlab.errors import DepthlabError
from depthlab.outputs import replaced
from depthlab.results.export import varied_fields
from depthlab.records import RunRecord
from depthlab.records import finite as store_finite

# One colour per wiring, the same in every figure.
TOPOLOGY_COLORS = {"sequential": "#1f5fa8", "parallel": "#e07b00"}
BAND_MARKERS = dict(zip(BAND_LABELS, ("o", "s", "^", "D")), **{NO_BAND: "X"})
DATASET_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
METRIC_LABELS = {"val_loss": "validation loss", "train_loss": "training loss", "val_acc": "validation accuracy",
                 "train_acc": "training accuracy", "test_loss": "test loss", "test_acc": "test accuracy"}
DPI = 110


class NoData(DepthlabError):
    """A figure has nothing to draw; the message says why."""


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


# -- the data behind the figures (plain lists, so tests can check them) ------------------------------------------


def used_pairs(records: list[RunRecord], metric: str = "val_loss") -> list[tuple[RunRecord, RunRecord]]:
    """(sequential, parallel) pairs whose runs are both done, learned and did not blow up (`run_state`), with a
    finite `metric`: the pairs the paired statistics of `compare` use for that metric, in the same order."""
    pairs, _ = pair_records(records)
    return [(s, p) for s, p in pairs
            if run_state(s) == "done" and run_state(p) == "done"
            and finite(s.metric(metric)) is not None and finite(p.metric(metric)) is not None]


def scatter_points(records: list[RunRecord], metric: str = "val_loss") -> list[dict]:
    """One point per used pair: x = sequential, y = parallel final `metric`, with its dataset and Q band."""
    return [dict(x=float(s.metric(metric)), y=float(p.metric(metric)), dataset=str(s.config.get("dataset")),
                 band=q_band(s.q), seq=s.run_id, par=p.run_id)
            for s, p in used_pairs(records, metric)]


def winrate_cells(records: list[RunRecord], metric: str = "val_loss") -> dict:
    """{dataset: {(blocks, width): (parallel wins, pairs)}}: a win is a strictly lower `metric` for parallel
    (strictly higher for an accuracy)."""
    higher_is_better = metric.endswith("_acc")
    out: dict[str, dict] = {}
    for s, p in used_pairs(records, metric):
        d = float(p.metric(metric)) - float(s.metric(metric))
        win = d > 0 if higher_is_better else d < 0
        cells = out.setdefault(str(s.config.get("dataset")), {})
        key = (s.config.get("blocks"), s.config.get("width"))
        wins, n = cells.get(key, (0, 0))
        cells[key] = (wins + int(win), n + 1)
    return out


def curve_runs(records: list[RunRecord], n: int = 8,
               metric: str = "val_loss") -> list[tuple[RunRecord, RunRecord | None, float]]:
    """The pairs with the largest |parallel − sequential| final `metric`, at most `n` runs in all, as
    (sequential, parallel, d); runs without a per-epoch history are skipped. Without pairs: the first `n` done
    runs with a history, as (run, None, nan)."""
    chosen, count = [], 0
    pairs = [(s, p) for s, p in used_pairs(records, metric) if s.history and p.history]
    pairs.sort(key=lambda sp: -abs(float(sp[1].metric(metric)) - float(sp[0].metric(metric))))
    for s, p in pairs:
        if count >= n:
            break
        d = float(p.metric(metric)) - float(s.metric(metric))
        chosen.append((s, p if count + 2 <= n else None, d))
        count += 2
    if not pairs:
        singles = [r for r in records if r.status == "done" and r.history][:n]
        chosen = [(r, None, float("nan")) for r in singles]
    return chosen


# -- figures --------------------------------------------------------------------------------------------------


def scatter_pairs(records: list[RunRecord], metric: str = "val_loss") -> Figure:
    """Sequential vs parallel final `metric`, one point per matched pair; colour = dataset, marker = Q band,
    and the line y = x (below it, parallel has the lower value)."""
    points = scatter_points(records, metric)
    if not points:
        raise NoData(f"no sequential/parallel pairs with both runs done and a finite {metric}")
    colors = _dataset_colors({pt["dataset"] for pt in points})
    fig = Figure(figsize=(5.6, 5.0), layout="constrained")
    ax = fig.add_subplot()
    bands = [b for b in BAND_MARKERS if any(pt["band"] == b for pt in points)]
    for dataset, color in colors.items():
        for band in bands:
            sel = [pt for pt in points if pt["dataset"] == dataset and pt["band"] == band]
            if sel:
                ax.scatter([pt["x"] for pt in sel], [pt["y"] for pt in sel], c=color, marker=BAND_MARKERS[band],
                           s=36, alpha=0.8, edgecolors="white", linewidths=0.5, zorder=3)
    values = [pt["x"] for pt in points] + [pt["y"] for pt in points]
    lo, hi = min(values), max(values)
    if _wide_range(values):  # datasets at very different loss levels: each cluster stays readable
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
    name = METRIC_LABELS.get(metric, metric)
    ax.set_xlabel(f"sequential (deep): final {name}")
    ax.set_ylabel(f"parallel (shallow): final {name}")
    better = "above" if metric.endswith("_acc") else "below"
    ax.set_title(f"Final {name}, {len(points)} matched pair{'s' * (len(points) != 1)}\n"
                 f"({better} the line y = x: parallel better)", fontsize=10)
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=_text(d)) for d, c in colors.items()]
    leg = ax.legend(handles=handles, title="dataset", loc="upper left", fontsize=8, title_fontsize=8)
    ax.add_artist(leg)
    handles = [Line2D([], [], marker=BAND_MARKERS[b], linestyle="", color="#444444", label=b) for b in bands]
    handles.append(Line2D([], [], color="#555555", linestyle="--", label="y = x"))
    ax.legend(handles=handles, title="Q band", loc="lower right", fontsize=8, title_fontsize=8)
    return fig


def loss_vs_q(records: list[RunRecord], metric: str = "val_loss") -> Figure:
    """Final `metric` of the done runs against Q (log scale), sequential and parallel, one panel per dataset;
    the line joins the mean at each Q value, the dotted verticals are the Q band edges."""
    runs = [r for r in records if r.status == "done" and r.config.get("topology") in TOPOLOGY_COLORS
            and finite(r.metric(metric)) is not None and (finite(r.q) or 0) > 0]
    if not runs:
        raise NoData(f"no done sequential or parallel run with a Q and a finite {metric}")
    datasets = sorted({str(r.config.get("dataset")) for r in runs})
    fig = Figure(figsize=(5.6, 4.6) if len(datasets) == 1 else (min(5.0 * len(datasets), 11.5), 4.2),
                 layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    name = METRIC_LABELS.get(metric, metric)
    for ax, dataset in zip(axes, datasets):
        qs_all = []
        for topology, color in TOPOLOGY_COLORS.items():
            sel = [r for r in runs if str(r.config.get("dataset")) == dataset and r.config.get("topology") == topology]
            if not sel:
                continue
            q = np.array([float(r.q) for r in sel])
            y = np.array([float(r.metric(metric)) for r in sel])
            qs_all.extend(q)
            ax.scatter(q, y, color=color, s=16, alpha=0.45, marker="o" if topology == "sequential" else "^",
                       linewidths=0)
            levels = np.unique(q)
            ax.plot(levels, [y[q == v].mean() for v in levels], color=color, linewidth=1.8, marker="o"
                    if topology == "sequential" else "^", markersize=4, label=f"{topology} (mean, n={len(sel)})")
        ax.set_xscale("log")
        lo, hi = min(qs_all) / 1.5, max(qs_all) * 1.5
        ax.set_xlim(lo, hi)
        for edge in (1, 3, 10):
            if lo < edge < hi:
                ax.axvline(edge, color="#999999", linestyle=":", linewidth=1)
        # plain numbers on the 1-3-10 grid of the band edges, not powers of ten
        ticks = [t for e in range(-4, 7) for t in (10.0 ** e, 3 * 10.0 ** e) if lo <= t <= hi]
        if len(ticks) >= 2:
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("Q = training examples × outputs / parameters")
        ax.set_ylabel(f"final {name}")
        ax.set_title(_text(dataset), fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="best")
    if len(datasets) == 1:
        axes[0].set_title(f"Final {name} against Q: {_text(datasets[0])}", fontsize=10)
    else:
        fig.suptitle(f"Final {name} against Q", fontsize=11)
    return fig


def _pair_label(rec: RunRecord, fields: list[str]) -> str:
    text = " ".join(f"{f}={rec.config.get(f)}" for f in fields) or str(rec.run_id)
    return _text(text if len(text) <= 48 else text[:45] + "...")


def learning_curves(records: list[RunRecord], n: int = 8, metric: str = "val_loss") -> Figure:
    """`metric` per epoch for at most `n` runs: the pairs with the largest final |difference| (sequential solid,
    parallel dashed, one colour per pair)."""
    chosen = curve_runs(records, n, metric)
    if not chosen:
        raise NoData("no done run with a per-epoch history")
    fields = [f for f in varied_fields(records) if f != "topology"]
    fig = Figure(figsize=(10.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    name = METRIC_LABELS.get(metric, metric)
    for i, (seq, par, d) in enumerate(chosen):
        color = DATASET_COLORS[i % len(DATASET_COLORS)]
        label = _pair_label(seq, fields) + ("" if math.isnan(d) else f"  (d = {d:+.3g})")
        for rec, style in ((seq, "-"), (par, "--")):
            if rec is None:
                continue
            hist = [h for h in rec.history if finite(h.get(metric)) is not None]
            ax.plot([h.get("epoch", k + 1) for k, h in enumerate(hist)], [h[metric] for h in hist], style,
                    color=color, marker="o", markersize=3, linewidth=1.5, label=label if style == "-" else None)
    drawn = [v for line in ax.get_lines() for v in line.get_ydata()]
    if drawn and _wide_range(drawn):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    kind = "pairs with the largest |final difference|" if not math.isnan(chosen[0][2]) else "runs (no pairs)"
    ax.set_title(f"{name.capitalize()} per epoch: {kind}", fontsize=10)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="#444444", linestyle="-", label="sequential (deep)"),
                Line2D([], [], color="#444444", linestyle="--", label="parallel (shallow)")]
    fig.legend(handles=handles, fontsize=8, loc="outside right center", frameon=False)
    return fig


def winrate_heatmap(records: list[RunRecord], metric: str = "val_loss") -> Figure:
    """Per dataset, over blocks × width: the fraction of pairs where parallel has the better final `metric`
    (lower loss, higher accuracy), with the counts in each cell."""
    cells = winrate_cells(records, metric)
    if not cells:
        raise NoData(f"no sequential/parallel pairs with both runs done and a finite {metric}")
    datasets = sorted(cells)
    fig = Figure(figsize=(5.6, 4.6) if len(datasets) == 1 else (min(1.0 + 4.6 * len(datasets), 11.5), 4.0),
                 layout="constrained")
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    image = None
    for ax, dataset in zip(axes, datasets):
        grid = cells[dataset]
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
        ax.set_title(_text(dataset), fontsize=10)
    better = "higher" if metric.endswith("_acc") else "lower"
    fig.colorbar(image, ax=list(axes), label=f"parallel win rate ({better} final {metric})", shrink=0.9)
    fig.suptitle(f"Share of pairs where parallel has the {better}\nfinal {METRIC_LABELS.get(metric, metric)}",
                 fontsize=10)
    return fig


def _order(value):
    return (0, float(value), "") if isinstance(value, (int, float)) else (1, 0.0, str(value))


def prune_profile(rows: list[dict], density: float) -> Figure:
    """Density kept in each block against its position, one line per pruning method, the deep wiring solid and
    the shallow one dashed (rows as `depthlab prune` computes them)."""
    if not rows:
        raise NoData("no pruning profile to draw")
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    colors = _dataset_colors({r["method"] for r in rows})  # one colour per method
    for r in rows:
        style = "-" if r["topology"] == "sequential" else "--"
        ax.plot(range(len(r["blocks"])), r["blocks"], style, marker="o", markersize=3, color=colors[r["method"]],
                label=f"{r['method']} ({r['topology']})")
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
    points = erf_points(records)
    if not points:
        raise NoData("no done run recorded its receptive fields (runs trained before they were recorded?)")
    fig = Figure(figsize=(5.8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    labels = sorted({p["label"] for p in points})
    colors = _dataset_colors(labels)  # one colour per branch type and kernel
    markers = {"sequential": "o", "parallel": "^"}
    for p in points:
        marker = markers.get(p["topology"], "s")
        ax.scatter(p["theory"], p["erf90"], color=colors[p["label"]], marker=marker, s=30, alpha=0.7)
        ax.scatter(p["theory"], p["erf50"], facecolors="none", edgecolors=colors[p["label"]], marker=marker, s=30)
    top = max(max(p["theory"], p["erf90"]) for p in points) * 1.05
    ax.plot([0, top], [0, top], "--", color="#999999", linewidth=1)
    ax.set_xlabel("theoretical receptive field (input pixels)")
    ax.set_ylabel("effective receptive field (side, pixels)")
    handles = [Line2D([], [], color=colors[lab], marker="o", linestyle="", label=_text(lab)) for lab in labels]
    handles += [Line2D([], [], color="#444444", marker=m, linestyle="", label=t) for t, m in markers.items()]
    ax.legend(handles=handles, fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    ax.set_title("Receptive fields: filled 90% of the gradient mass, hollow 50%", fontsize=10)
    return fig


# How each figure of `depthlab plot KIND` is drawn, keyed and ordered as depthlab.choices.PLOT_KINDS (which the
# CLI reads without importing matplotlib; tests/cli/test_choices.py keeps the two equal).
KINDS = {
    "scatter-val": lambda records, n: scatter_pairs(records, "val_loss"),
    "scatter-train": lambda records, n: scatter_pairs(records, "train_loss"),
    "loss-vs-q": lambda records, n: loss_vs_q(records, "val_loss"),
    "curves": lambda records, n: learning_curves(records, n, "val_loss"),
    "winrate": lambda records, n: winrate_heatmap(records, "val_loss"),
    "erf": lambda records, n: receptive_fields(records),
    "prune": lambda records, n: prune_profile(prune_rows(records), float("nan")),
}
# Figures the report shows only when the sweep varies one of these fields.
CONDITIONAL = {"erf": ("kernel", "branch", "reparam"), "prune": ("prune", "density", "prune_structure")}


def figure(kind: str, records: list[RunRecord], n: int = 8) -> Figure:
    """The figure of one KIND (see `KINDS`); raises NoData when it has nothing to draw."""
    if kind not in PLOT_KINDS:
        raise DepthlabError(f"unknown figure {kind!r}; choose one of {', '.join(PLOT_KINDS)}")
    return KINDS[kind](records, n)


def image_format(path) -> str:
    """"png" or "svg", from the file name's extension."""
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if ext not in FORMATS:
        raise DepthlabError(f"{os.fspath(path)}: cannot tell the image format; use a "
                            f"{' or '.join('.' + f for f in FORMATS)} file name")
    return ext


def save(fig: Figure, path) -> str:
    """Write `fig` to `path` as PNG or SVG, chosen by the extension. Returns the path."""
    path = os.fspath(path)
    ext = image_format(path)
    try:
        with replaced(path) as temp:
            fig.savefig(temp, format=ext, dpi=DPI)
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
    wirings = list(TOPOLOGY_COLORS)
    topologies = sorted({t for t, _ in cells}, key=lambda t: (wirings.index(t) if t in wirings else len(wirings), t))
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
