"""The study page: one self-contained HTML file of a `depthlab study` result (the dict `depthlab study --json`
prints), readable offline and safe to mail around.

In this order: per parameter budget the recommendation (the chosen design with its metric, the best design, the
designs not worse than it, the evidence; an undecided budget says so and what would decide it), the frontier
figures (the depth lever's metric against blocks; metric against batch-1 latency with the Pareto set marked),
one card per lever and budget with its verdicts, and the robustness heat maps (design × corruption accuracy per
test-time method and batch size).

The page is a jinja2 template (`templates/study.html.j2`) rendered with autoescape on: design names, labels and
sentences come from configs and are user input. It holds no script; its Content-Security-Policy lets it load
and run nothing, so even an escaping bug could not run injected script. Figures are matplotlib SVG inlined in
the page with `svg.fonttype = 'none'`, so their text stays text (searchable, editable in a vector editor).
A missing value (None, NaN) shows as "–", an empty list or a figure without data as a sentence saying so.
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import os
from pathlib import Path

import jinja2
import matplotlib
import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from depthlab.errors import DepthlabError
from depthlab.outputs import replaced
from depthlab.report import plots
from depthlab.report.html import CSS as REPORT_CSS
from depthlab.report.plots import METRIC_LABELS, TOPOLOGY_COLORS, NoData, finite
from depthlab.study.text import how_measured

DASH = "–"  # any value not measured (None, NaN) or not given
TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "study.html.j2"

# The page runs no script and loads nothing: only its inline styles and data: images (an SVG heat map's cells).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = REPORT_CSS + """
.badge.v-und { background: #b86e00; }
.card.rec { border-left: 5px solid var(--eq); }
.card.rec.undecided { border-left-color: #b86e00; background: #fffaf2; }
.rec .choice { font-size: 17px; }
.metric { font-weight: 600; font-variant-numeric: tabular-nums; white-space: nowrap; }
.design { font-weight: 600; }
.undecided-box { border: 1px dashed #b86e00; background: #fff3df; border-radius: 6px; padding: 6px 10px;
                 margin: 8px 0; }
.evidence { margin: 4px 0 4px 18px; padding: 0; font-size: 13px; }
.lever { margin: 14px 0; }
.lever .question { font-style: italic; margin: 0 0 4px; }
.lever td { white-space: nowrap; }
figure svg { max-width: 100%; height: auto; display: block; margin: 0 auto; }
"""


# -- values as text ---------------------------------------------------------------------------------------------


def text(value) -> str:
    """A value as shown: "–" for None or an empty string."""
    return DASH if value is None or value == "" else str(value)


def num(value, digits: int = 4) -> str:
    """A number with `digits` significant digits (as `depthlab compare` prints, 4), "–" when missing or not
    finite; an int stays whole."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    value = finite(value)
    return DASH if value is None else f"{value:.{digits}g}"


def count(value) -> str:
    """A count such as parameters, with thousands separators."""
    value = finite(value)
    return DASH if value is None else f"{round(value):,}"


def seconds(value) -> str:
    value = finite(value)
    return DASH if value is None else f"{value:.1f} s"


def ms(value) -> str:
    value = finite(value)
    return DASH if value is None else f"{value:.3g} ms"


def metric_num(value) -> str:
    """A metric value: 4 significant digits as `depthlab compare` prints, trailing zeros kept so that a column of
    means lines up (0.9700 beside 0.9712)."""
    value = finite(value)
    return DASH if value is None else f"{value:#.4g}".rstrip(".")


def percent(value) -> str:
    value = finite(value)
    return DASH if value is None else f"{100 * value:.1f}"


def interval(lo, hi) -> str:
    lo, hi = finite(lo), finite(hi)
    return DASH if lo is None or hi is None else f"[{lo:.4g}, {hi:.4g}]"


def mean_std(mean, std) -> str:
    mean, std = finite(mean), finite(std)
    if mean is None:
        return DASH
    return metric_num(mean) if std is None else f"{metric_num(mean)} ± {std:.2g}"


def budget_name(budget: dict) -> str:
    value = budget.get("budget")
    return f"budget {value:,} parameters" if isinstance(value, int) and not isinstance(value, bool) \
        else f"budget {text(value)}"


def _budget_short(budget: dict) -> str:
    value = budget.get("budget")
    return f"{value:,} params" if isinstance(value, int) and not isinstance(value, bool) else text(value)


def _dicts(values) -> list[dict]:
    return [v for v in (values or []) if isinstance(v, dict)]


def _designs(budget: dict) -> dict[str, dict]:
    return {str(d.get("name")): d for d in _dicts(budget.get("designs"))}


def _metric(result: dict) -> str:
    return str(result.get("metric") or "metric")


def _better(result: dict) -> bool:
    return result.get("higher_is_better") is not False


def verdict_class(verdict: dict) -> str:
    """The report's badge colours: equivalent green, b better orange, a better blue, anything else grey."""
    words = str(verdict.get("verdict") or "")
    if words.startswith("equivalent"):
        return "v-eq"
    if words.endswith(" better"):
        who = words[: -len(" better")]
        if who in ("b", str(verdict.get("b")), str(verdict.get("b_label"))):
            return "v-par"
        if who in ("a", str(verdict.get("a")), str(verdict.get("a_label"))):
            return "v-seq"
    return "v-inc"


# -- figures ------------------------------------------------------------------------------------------------------


def inline_svg(fig: Figure) -> Markup:
    """The figure as an inline <svg> element whose text stays <text> (no glyph outlines)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    return Markup(svg[svg.index("<svg"):])


def _figure(make, *args) -> dict:
    """{"svg": the figure} or {"nodata": why there is none}."""
    try:
        return {"svg": inline_svg(make(*args)), "nodata": None}
    except NoData as err:
        return {"svg": None, "nodata": str(err)}


def _int_ticks(ax, values) -> None:
    values = sorted(set(values))
    if len(values) > 1 and values[0] > 0 and values[-1] / values[0] > 4:
        ax.set_xscale("log", base=2)
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.minorticks_off()


def depth_points(result: dict) -> list[dict]:
    """The depth lever's designs with a metric mean and a block count, one dict per design: budget (its
    label), topology, blocks, mean, std (0 when not measured), name."""
    out = []
    for budget in _dicts(result.get("budgets")):
        for d in _dicts(budget.get("designs")):
            blocks, mean = finite(d.get("blocks")), finite(d.get("metric_mean"))
            if "depth" in (d.get("levers") or []) and blocks is not None and mean is not None:
                out.append(dict(budget=_budget_short(budget), topology=text(d.get("topology")), blocks=blocks,
                                mean=mean, std=finite(d.get("metric_std")) or 0.0, name=text(d.get("name"))))
    return out


def depth_frontier_figure(result: dict) -> Figure:
    """The metric (mean ± std over seeds) against blocks for the depth lever's designs: one colour per budget,
    one line style per wiring."""
    points = depth_points(result)
    if not points:
        raise NoData("no design of the depth lever has a metric mean yet")
    metric = _metric(result)
    budgets = list(dict.fromkeys(p["budget"] for p in points))
    topologies = list(dict.fromkeys(p["topology"] for p in points))
    styles = {t: ("-", "--", ":", "-.")[i % 4] for i, t in enumerate(topologies)}
    markers = {t: ("o", "^", "s", "D")[i % 4] for i, t in enumerate(topologies)}
    fig = Figure(figsize=(6.2, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for i, budget in enumerate(budgets):
        color = plots.DATASET_COLORS[i % len(plots.DATASET_COLORS)]
        for topology in topologies:
            sel = sorted((p for p in points if p["budget"] == budget and p["topology"] == topology),
                         key=lambda p: p["blocks"])
            if not sel:
                continue
            label = plots._text(budget if len(topologies) == 1 else f"{budget}, {topology}")
            ax.errorbar([p["blocks"] for p in sel], [p["mean"] for p in sel], yerr=[p["std"] for p in sel],
                        color=color, linestyle=styles[topology], marker=markers[topology], markersize=5,
                        linewidth=1.6, capsize=3, label=label)
    _int_ticks(ax, [p["blocks"] for p in points])
    name = METRIC_LABELS.get(metric, metric)
    ax.set_xlabel("blocks (depth; width set by the parameter budget)")
    ax.set_ylabel(f"{plots._text(name)} (mean ± std over seeds)")
    better = "higher" if _better(result) else "lower"
    ax.set_title(f"Depth against width at equal parameters ({better} is better)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def pareto_front(designs: list[dict], higher_is_better: bool = True) -> list[str]:
    """Names of the designs on the Pareto front of metric (higher, or lower when not `higher_is_better`) and
    batch-1 latency (lower), in their given order: no other design is at least as good on both and better on
    one. Designs missing either value are left out; two identical designs both stay."""
    pts = [(text(d.get("name")), finite(d.get("latency_b1_ms")), finite(d.get("metric_mean"))) for d in designs]
    pts = [(n, lat, m if higher_is_better else -m) for n, lat, m in pts if lat is not None and m is not None]
    return [n for n, lat, m in pts
            if not any(l2 <= lat and m2 >= m and (l2 < lat or m2 > m) for _, l2, m2 in pts)]


def pareto_figure(result: dict, budget: dict) -> Figure:
    """The metric against batch-1 latency for all designs of one budget; the Pareto set joined, ringed and
    named, the recommended design starred."""
    designs = _dicts(budget.get("designs"))
    usable = [d for d in designs if finite(d.get("latency_b1_ms")) is not None
              and finite(d.get("metric_mean")) is not None]
    if not designs:
        raise NoData("no designs")
    if not usable:
        missing = "a measured batch-1 latency" if all(finite(d.get("latency_b1_ms")) is None for d in designs) \
            else "both a latency and a metric mean"
        raise NoData(f"no design has {missing}")
    # a design over the budget (the crop lever's mask runs dense) is drawn but is no candidate, so not on the front
    over = set((budget.get("recommendation") or {}).get("over_budget") or ())
    front = set(pareto_front([d for d in usable if d.get("name") not in over], _better(result)))
    choice = (budget.get("recommendation") or {}).get("choice")
    metric = _metric(result)
    fig = Figure(figsize=(5.8, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for d in usable:
        x, y = finite(d["latency_b1_ms"]), finite(d["metric_mean"])
        color = TOPOLOGY_COLORS.get(d.get("topology"), "#666666")
        on_front = text(d.get("name")) in front
        ax.errorbar([x], [y], yerr=[finite(d.get("metric_std")) or 0.0], color=color, marker="o",
                    markersize=7 if on_front else 5, markeredgecolor="black" if on_front else color,
                    alpha=1.0 if on_front else 0.55, capsize=2, linestyle="")
        if on_front:
            ax.annotate(plots._text(text(d.get("name"))), (x, y), textcoords="offset points", xytext=(6, 5),
                        fontsize=8)
        if choice is not None and d.get("name") == choice:
            ax.scatter([x], [y], marker="*", s=260, facecolors="none", edgecolors="#2e7d32", linewidths=1.5,
                       zorder=4)
    line = sorted((finite(d["latency_b1_ms"]), finite(d["metric_mean"])) for d in usable
                  if text(d.get("name")) in front)
    ax.plot([p[0] for p in line], [p[1] for p in line], color="#333333", linewidth=1, linestyle="--", zorder=1)
    if plots._wide_range([finite(d["latency_b1_ms"]) for d in usable]):
        ax.set_xscale("log")
    name = METRIC_LABELS.get(metric, metric)
    ax.set_xlabel("inference latency at batch 1 (ms, merged form)")
    ax.set_ylabel(f"{plots._text(name)} (mean ± std over seeds)")
    left_out = len(designs) - len(usable)
    note = f"\n({left_out} design{'s' * (left_out != 1)} without a latency or metric left out)" if left_out else ""
    ax.set_title(plots._text(f"{_budget_short(budget)}: {name} against latency{note}"), fontsize=9)
    ax.grid(True, alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=t) for t, c in TOPOLOGY_COLORS.items()
               if any(d.get("topology") == t for d in usable)]
    handles.append(Line2D([], [], color="#333333", marker="o", markeredgecolor="black", linestyle="--",
                          label="Pareto set (named)"))
    if choice is not None and any(d.get("name") == choice for d in usable):
        handles.append(Line2D([], [], color="#2e7d32", marker="*", markersize=11, markerfacecolor="none",
                              linestyle="", label="recommended"))
    ax.legend(handles=handles, fontsize=8, loc="best")
    return fig


def _ordered(listed, seen) -> list[str]:
    """The listed values that occur in `seen`, in the listed order, then the others of `seen` as they come."""
    seen = list(dict.fromkeys(text(v) for v in seen))
    first = [text(v) for v in (listed or []) if text(v) in seen]
    return list(dict.fromkeys(first + seen))


def robustness_cells(budget: dict) -> dict:
    """{(method, batch size): {(design, corruption): (accuracy, n)}}, all keys as text, from the cells with a
    measured accuracy; and the orders of the methods, batch sizes, designs and corruptions, under the keys
    "methods", "batch_sizes", "designs" and "corruptions" (as listed, then any others the cells hold)."""
    rob = budget.get("robustness") or {}
    cells = [c for c in _dicts(rob.get("cells")) if finite(c.get("accuracy")) is not None]
    panels: dict = {}
    for c in cells:
        panel = panels.setdefault((text(c.get("method")), text(c.get("batch_size"))), {})
        panel[(text(c.get("design")), text(c.get("corruption")))] = (finite(c["accuracy"]), c.get("n"))
    return dict(panels=panels,
                methods=_ordered(rob.get("methods"), [m for m, _ in panels]),
                batch_sizes=_ordered(rob.get("batch_sizes"), [b for _, b in panels]),
                designs=_ordered([d.get("name") for d in _dicts(budget.get("designs"))],
                                 [d for p in panels.values() for d, _ in p]),
                corruptions=_ordered(rob.get("corruptions"), [c for p in panels.values() for _, c in p]))


def robustness_figure(budget: dict) -> Figure:
    """Design × corruption accuracy, one panel per test-time method (columns) and batch size (rows)."""
    grid = robustness_cells(budget)
    panels = grid["panels"]
    if not panels:
        raise NoData("no robustness cell has a measured accuracy yet")
    methods, batches, designs, corruptions = (grid[k] for k in ("methods", "batch_sizes", "designs", "corruptions"))
    values = [acc for p in panels.values() for acc, _ in p.values()]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.01, hi + 0.01
    width = min(1.3 + 0.5 * len(corruptions), 6.5) * len(methods) + 1.2
    height = min(1.3 + 0.3 * len(designs), 7.0) * len(batches) + 0.6
    fig = Figure(figsize=(min(width, 15.0), min(height, 22.0)), layout="constrained")
    axes = fig.subplots(len(batches), len(methods), squeeze=False)
    image = None
    for i, batch in enumerate(batches):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            panel = panels.get((method, batch), {})
            acc = np.full((len(designs), len(corruptions)), np.nan)
            for (d, c), (a, _) in panel.items():
                acc[designs.index(d), corruptions.index(c)] = a
            image = ax.imshow(np.ma.masked_invalid(acc), cmap="magma", vmin=lo, vmax=hi, aspect="auto")
            if len(designs) * len(corruptions) <= 200:
                for (d, c), (a, _) in panel.items():
                    ax.text(corruptions.index(c), designs.index(d), f"{100 * a:.1f}", ha="center", va="center",
                            fontsize=7, color="white" if a < lo + 0.5 * (hi - lo) else "black")
            ax.set_xticks(range(len(corruptions)), [plots._text(c) for c in corruptions], rotation=35, ha="right",
                          fontsize=8)
            ax.set_yticks(range(len(designs)), [plots._text(d) for d in designs] if j == 0 else [], fontsize=8)
            ax.set_title(plots._text(f"{method}, batch {batch}"), fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="accuracy under corruption", shrink=0.8)
    fig.suptitle(plots._text(f"{budget_name(budget)}: accuracy per design and corruption (cells: %)"), fontsize=10)
    return fig


# -- the parts of the page, as plain values for the template -------------------------------------------------


def _mention(result: dict, designs: dict, name) -> dict | None:
    """A design as the page names it: name, label, its metric (mean ± std) beside it, and its accuracy too when
    the metric is another."""
    if name is None:
        return None
    d = designs.get(str(name), {})
    metric = _metric(result)
    values = f"{metric} {mean_std(d.get('metric_mean'), d.get('metric_std'))}"
    if metric != "val_acc" and "val_acc_mean" in d:
        values += f" · val_acc {num(d.get('val_acc_mean'))}"
    facts = [f"{count(d.get('params'))} params", f"{ms(d.get('latency_b1_ms'))} at batch 1"]
    facts = " · ".join([text(d.get("label"))] + facts) if d else "not among the budget's designs"
    return dict(name=str(name), shown=values, facts=facts)


def _recommendation(result: dict, budget: dict, index: int) -> dict:
    rec = budget.get("recommendation")
    designs = _designs(budget)
    out = dict(id=f"rec-{index}", budget=budget_name(budget), present=isinstance(rec, dict))
    if not isinstance(rec, dict):
        return dict(out, decided=False)
    decided = rec.get("decided") is True
    return dict(out, decided=decided,
                choice=_mention(result, designs, rec.get("choice")),
                best=_mention(result, designs, rec.get("best")),
                not_worse=[_mention(result, designs, n) for n in rec.get("not_worse") or [] if n is not None],
                evidence=[str(s) for s in rec.get("evidence") or [] if s is not None],
                why=text(rec.get("why")),
                what_would_decide=text(rec.get("what_would_decide")))


def _verdict_row(result: dict, designs: dict, v: dict) -> dict:
    def side(key):
        d = designs.get(str(v.get(key)), {})
        acc = ""
        if _metric(result) != "val_acc" and "val_acc_mean" in d:
            acc = f"val_acc {num(d.get('val_acc_mean'))}"
        label = v.get(f"{key}_label")
        return dict(name=text(v.get(key)), label="" if label is None or label == v.get(key) else str(label),
                    mean=metric_num(v.get(f"{key}_mean")), acc=acc)

    tost = finite(v.get("tost_p"))
    return dict(a=side("a"), b=side("b"), d=num(v.get("d_mean")), ci=interval(v.get("ci_low"), v.get("ci_high")),
                tost=DASH if tost is None else f"{tost:.3g}", pairs=f"{num(v.get('n_pairs'))} / {num(v.get('seeds'))}",
                verdict=text(v.get("verdict")), cls=verdict_class(v), stopped=text(v.get("stopped")))


def _levers(result: dict, budget: dict, index: int) -> dict:
    designs = _designs(budget)
    cards = []
    for j, lever in enumerate(_dicts(budget.get("levers"))):
        skipped = lever.get("skipped")
        cards.append(dict(id=f"lever-{index}-{j}", lever=text(lever.get("lever")),
                          title=text(lever.get("title") or lever.get("lever")), question=text(lever.get("question")),
                          reference=text(lever.get("reference")), contrast=text(lever.get("contrast")),
                          skipped=None if skipped is None else text(skipped),
                          rows=[_verdict_row(result, designs, v) for v in _dicts(lever.get("verdicts"))]))
    return dict(budget=budget_name(budget), cards=cards)


def _robustness(budget: dict, index: int) -> dict:
    rob = budget.get("robustness")
    out = dict(id=f"robustness-{index}", budget=budget_name(budget), skipped=None, figure=None, table=None)
    if not isinstance(rob, dict):
        return dict(out, skipped="no robustness measurement for this budget")
    if rob.get("skipped") is not None:
        return dict(out, skipped=text(rob["skipped"]))
    out["figure"] = _figure(robustness_figure, budget)
    grid = robustness_cells(budget)
    columns = [(m, b) for b in grid["batch_sizes"] for m in grid["methods"] if (m, b) in grid["panels"]]
    rows = []
    for design in grid["designs"]:
        row = []
        for key in columns:
            accs = [a for (d, _), (a, _) in grid["panels"][key].items() if d == design]
            row.append(percent(sum(accs) / len(accs) if accs else None))
        rows.append(dict(design=design, values=row))
    if columns:
        out["table"] = dict(headers=[f"{m}, batch {b}" for m, b in columns], rows=rows)
    return out


def _header(result: dict) -> dict:
    secs = result.get("seconds") if isinstance(result.get("seconds"), dict) else {}
    parts = [f"{k} {seconds(v)}" for k, v in secs.items() if k != "total"]
    timing = "time " + seconds(secs.get("total")) + (f" ({', '.join(parts)})" if parts else "")
    threads = result.get("threads")
    machine = f"{text(result.get('device'))} · {text(result.get('precision'))}{how_measured(result)}" + (
        f" · {threads} threads" if threads is not None else "")
    better = "higher" if _better(result) else "lower"
    stats = (f"metric {text(result.get('metric'))} ({better} is better) · margin {num(result.get('margin'))} · "
             f"alpha {num(result.get('alpha'))} per contrast over {num(result.get('looks'))} looks "
             f"({num(result.get('alpha_per_look'))} per look)")
    return dict(title=f"depthlab study: {text(result.get('study'))}", dataset=text(result.get("dataset")),
                level=text(result.get("level")), machine=machine, timing=timing, stats=stats)


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_study_html(result: dict) -> str:
    """The study result (`depthlab study --json`'s dict) as one HTML page."""
    from depthlab import __version__

    result = result if isinstance(result, dict) else {}
    budgets = _dicts(result.get("budgets"))
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _environment().get_template(TEMPLATE).render(
        css=Markup(CSS), csp=CSP, head=_header(result), generated=f"generated {now} by depthlab {__version__}",
        recommendations=[_recommendation(result, b, i) for i, b in enumerate(budgets)],
        depth_figure=_figure(depth_frontier_figure, result),
        pareto=[dict(budget=budget_name(b), figure=_figure(pareto_figure, result, b)) for b in budgets],
        levers=[_levers(result, b, i) for i, b in enumerate(budgets)],
        robustness=[_robustness(b, i) for i, b in enumerate(budgets)])


def write_study_html(result: dict, path) -> None:
    """Render the page, then write it to `path` through a temporary file renamed over it once complete
    (`depthlab.outputs.replaced`): a failed render or a killed write leaves any previous file as it was."""
    page = render_study_html(result)
    path = os.fspath(path)
    try:
        with replaced(path) as temp:
            temp.write_text(page, encoding="utf-8")
    except OSError as err:
        raise DepthlabError(f"cannot write {path}: {err.strerror or err}") from err
