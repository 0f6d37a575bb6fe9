"""The honest comparison of the two wirings: deep (sequential) against shallow (parallel) at equal parameters.

Two views:

- `band_table`: the reference study's table: mean final losses of finished runs per dataset x topology x band of
  the determination ratio Q = K·M/P (training examples x outputs / free parameters).
- `paired`: runs whose configs are identical except the topology form a pair; the per-pair difference
  d = parallel − sequential removes everything the two runs share (depth, width, seed, ...). For each group we
  give the mean and median d, a seeded percentile-bootstrap CI of the mean, win counts, and a TOST equivalence
  test, and from those one verdict. A mean alone would hide whether a difference is consistent, and "no
  significant difference" is not "equivalent": that takes TOST against a stated margin.

Pairs with a diverged or failed member cannot give a loss difference; they are left out of the statistics but
counted per topology, since a wiring that diverges more often would otherwise look better than it is.
"""

from __future__ import annotations

import json
import math

import numpy as np

from depthlab.errors import SpecError
from depthlab.sweep.export import varied_fields
from depthlab.sweep.store import METRICS, STATUSES, canonical_json, config_of, finite

Q_BANDS = [(0.0, 1.0), (1.0, 3.0), (3.0, 10.0), (10.0, math.inf)]
BAND_LABELS = [f"[{lo:g},{hi:g})" for lo, hi in Q_BANDS]  # "[0,1)", "[1,3)", "[3,10)", "[10,inf)"
NO_BAND = "n/a"  # a run without q
ALL = "all"
TOPOLOGIES = ("sequential", "parallel")
DEFAULT_METRICS = ("val_loss", "train_loss", "val_acc")
RELATIVE_MARGIN = 0.05  # default margin for losses: 5% of the pooled mean
ACCURACY_MARGIN = 0.01  # default margin for accuracies: one percentage point
BAND_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")


def q_band(q) -> str:
    """The label of the Q band holding q (bands are closed below, open above: q = 1 is in "[1,3)")."""
    if q is None or math.isnan(float(q)):
        return NO_BAND
    q = float(q)
    if q < 0:
        raise ValueError(f"q must be >= 0, got {q}")
    for (lo, hi), label in zip(Q_BANDS, BAND_LABELS):
        if lo <= q < hi:
            return label
    return BAND_LABELS[-1]  # q = inf


def _band_order(label: str) -> int:
    return BAND_LABELS.index(label) if label in BAND_LABELS else len(BAND_LABELS)


def _topology_order(topology: str):
    if topology in TOPOLOGIES:
        return (TOPOLOGIES.index(topology), 0, "")
    if topology.startswith("groups:") and topology[7:].isdigit():
        return (2, int(topology[7:]), "")
    return (3, 0, topology)


def mean_or_none(values):
    """The mean of a list of floats, None for an empty one."""
    return float(np.mean(values)) if values else None


def std_or_none(values):
    """The sample standard deviation (ddof 1), None for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def band_table(records: list[dict]) -> list[dict]:
    """Mean (and std) final train/val loss and mean train/val accuracy of the 'done' runs per dataset x
    topology x Q band. Means are over the runs that have the metric."""
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        if rec.get("status") == "done":
            key = (str(rec.get("dataset")), str(rec.get("topology")), q_band(rec.get("q")))
            groups.setdefault(key, []).append(rec)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], _topology_order(k[1]), _band_order(k[2]))):
        row = dict(zip(("dataset", "topology", "q_band"), key), n=len(groups[key]))
        for m in BAND_METRICS:
            values = [v for v in (finite(r.get(m)) for r in groups[key]) if v is not None]
            row[f"{m}_mean"] = mean_or_none(values)
            if m.endswith("_loss"):
                row[f"{m}_std"] = std_or_none(values)
        rows.append(row)
    return rows


def pair_records(records: list[dict]) -> tuple[list[tuple[dict, dict]], dict]:
    """(sequential, parallel) pairs of records whose configs are identical except `topology`, in record
    order, and {"n_unpaired", "n_duplicate", "n_identical"}: runs without a partner, runs skipped because their
    key held more than one run of a topology (no one-to-one pairing is then justified), and runs of one-block
    pairs, left out because with one block both wirings are the same network. Other topologies are ignored."""
    buckets: dict[str, dict[str, list]] = {}
    for rec in records:
        cfg = config_of(rec)
        topology = cfg.get("topology", rec.get("topology"))
        if topology not in TOPOLOGIES:
            continue
        key = canonical_json({k: v for k, v in cfg.items() if k != "topology"})
        buckets.setdefault(key, {t: [] for t in TOPOLOGIES})[topology].append(rec)
    pairs, unpaired, duplicate, identical = [], 0, 0, 0
    for bucket in buckets.values():
        seq, par = bucket["sequential"], bucket["parallel"]
        if len(seq) == 1 and len(par) == 1 and config_of(seq[0]).get("blocks") == 1:
            identical += 2  # one block: both wirings are the same network, d = 0 says nothing
        elif len(seq) == 1 and len(par) == 1:
            pairs.append((seq[0], par[0]))
        elif len(seq) > 1 or len(par) > 1:
            duplicate += len(seq) + len(par)
        else:
            unpaired += len(seq) + len(par)
    return pairs, {"n_unpaired": unpaired, "n_duplicate": duplicate, "n_identical": identical}


def bootstrap_ci(d, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap (1 - alpha) CI of the mean of d; resampled in chunks to bound memory."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = d[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    lo, hi = np.percentile(means, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def tost_p(d, margin: float) -> float:
    """Two one-sided t-tests of the mean of d against -margin and +margin; the p-value is the larger one.
    p < alpha means the mean difference lies within ±margin (equivalence)."""
    d = np.asarray(d, dtype=float)
    from scipy import stats  # imported here: `depthlab status` should not pay for scipy

    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
    if sd == 0:  # no spread: the mean is exact
        return 0.0 if abs(mean) < margin else 1.0
    se = sd / math.sqrt(n)
    p_lower = stats.t.sf((mean + margin) / se, n - 1)  # H0: mean <= -margin
    p_upper = stats.t.cdf((mean - margin) / se, n - 1)  # H0: mean >= +margin
    return float(max(p_lower, p_upper))


def paired_stats(d, margin, *, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0,
                 higher_is_better: bool = False) -> dict:
    """Statistics and verdict for the paired differences d = parallel − sequential of one group."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    out = dict(n_pairs=n, mean=None, median=None, ci_low=None, ci_high=None, wins_parallel=0,
               wins_sequential=0, ties=0, tost_p=None, verdict="inconclusive")
    if n == 0:
        return out
    lower, higher = int((d < 0).sum()), int((d > 0).sum())
    out.update(mean=float(d.mean()), median=float(np.median(d)), ties=n - lower - higher,
               wins_parallel=higher if higher_is_better else lower,
               wins_sequential=lower if higher_is_better else higher)
    if n < 3:  # too few pairs for a CI or a t-test worth printing
        return out
    lo, hi = bootstrap_ci(d, alpha, n_boot, seed)
    out.update(ci_low=lo, ci_high=hi)
    if margin is not None and margin > 0:
        out["tost_p"] = tost_p(d, margin)
    better_if_below, better_if_above = (
        ("sequential better", "parallel better") if higher_is_better else ("parallel better", "sequential better")
    )
    if out["tost_p"] is not None and out["tost_p"] < alpha:
        out["verdict"] = f"equivalent within ±{margin:g}"
    elif hi < 0:
        out["verdict"] = better_if_below
    elif lo > 0:
        out["verdict"] = better_if_above
    return out


def _validate(metric, margin, alpha, n_boot):
    if metric not in METRICS:
        raise SpecError("metric", metric, ", ".join(METRICS))
    if margin is not None and not (isinstance(margin, (int, float)) and margin > 0 and math.isfinite(margin)):
        raise SpecError("margin", margin, "a positive number (absolute, in the metric's units)")
    if not 0 < alpha < 1:
        raise SpecError("alpha", alpha, "a number between 0 and 1")
    if not (isinstance(n_boot, int) and n_boot >= 1):
        raise SpecError("n_boot", n_boot, "a positive integer")


def check_by(records: list[dict], by: str) -> None:
    """`by` must be a config field that varies across the records (and not the compared topology)."""
    allowed = [f for f in varied_fields(records) if f != "topology"]
    if by not in allowed:
        raise SpecError("by", by, ", ".join(allowed) or "none (no config field varies besides topology)")


def paired(records: list[dict], metric: str = "val_loss", margin: float | None = None, by: str | None = None,
           alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> dict:
    """Paired comparison of `metric` per dataset, per dataset x Q band, and (with `by`) per value of that
    config field within each. See the module docstring; every number is in the returned dict."""
    _validate(metric, margin, alpha, n_boot)
    if by is not None:
        check_by(records, by)
    higher_is_better = metric.endswith("_acc")
    if margin is not None:
        margin_rule = f"absolute {margin:g} (given)"
    elif higher_is_better:
        margin_rule = f"absolute {ACCURACY_MARGIN:g} (accuracy default)"
    else:
        margin_rule = f"relative {RELATIVE_MARGIN:.0%} of mean (per group: {RELATIVE_MARGIN:g} x pooled mean)"

    pairs, info = pair_records(records)
    items = []
    for seq, par in pairs:
        cfg = config_of(seq)
        statuses = (seq.get("status"), par.get("status"))
        values = (finite(seq.get(metric)), finite(par.get(metric)))
        if any(s in ("diverged", "failed") for s in statuses):
            state = "excluded"
        elif statuses != ("done", "done"):
            state = "unfinished"
        elif None in values:
            state = "missing"
        else:
            state = "used"
        items.append(dict(dataset=str(cfg.get("dataset")), band=q_band(seq.get("q")),  # same params, same q
                          by=canonical_json(cfg.get(by)) if by else None, by_value=cfg.get(by) if by else None,
                          statuses=statuses, values=values, state=state))

    def group(sel, **labels):
        used = [i for i in sel if i["state"] == "used"]
        if margin is not None:
            m = float(margin)
        elif higher_is_better:
            m = ACCURACY_MARGIN
        else:
            pooled = [v for i in used for v in i["values"]]
            # rounded to 3 significant digits, so the margin tested is the one printed
            m = float(f"{RELATIVE_MARGIN * abs(float(np.mean(pooled))):.3g}") if pooled else None
        d = [i["values"][1] - i["values"][0] for i in used]
        row = dict(labels)
        row.update(paired_stats(d, m, alpha=alpha, n_boot=n_boot, seed=seed, higher_is_better=higher_is_better))
        row.update(margin=m, **tally(sel))
        return row

    def tally(sel):
        excluded = [i for i in sel if i["state"] == "excluded"]
        return dict(
            n_excluded=len(excluded),
            diverged={t: sum(i["statuses"][k] == "diverged" for i in excluded) for k, t in enumerate(TOPOLOGIES)},
            failed={t: sum(i["statuses"][k] == "failed" for i in excluded) for k, t in enumerate(TOPOLOGIES)},
            n_unfinished=sum(i["state"] == "unfinished" for i in sel),
            n_missing=sum(i["state"] == "missing" for i in sel),
        )

    groups = []
    for dataset in sorted({i["dataset"] for i in items}):
        in_dataset = [i for i in items if i["dataset"] == dataset]
        bands = [ALL] + sorted({i["band"] for i in in_dataset}, key=_band_order)
        slices = [(ALL, None)]
        if by:
            values = {i["by"]: i["by_value"] for i in in_dataset}
            slices += [(k, values[k]) for k in sorted(values, key=lambda k: value_order(values[k]))]
        for band in bands:
            for key, value in slices:
                sel = [i for i in in_dataset if band in (ALL, i["band"]) and key in (ALL, i["by"])]
                if sel:
                    labels = dict(dataset=dataset, q_band=band)
                    if by:
                        labels["by_value"] = ALL if key == ALL else value
                    groups.append(group(sel, **labels))

    return _json_safe(dict(
        metric=metric, difference="parallel - sequential", higher_is_better=higher_is_better,
        alpha=alpha, ci_level=1 - alpha, n_boot=n_boot, seed=seed, margin=margin, margin_rule=margin_rule, by=by,
        pairs=dict(n_found=len(items), n_pairs=sum(i["state"] == "used" for i in items), **tally(items), **info),
        groups=groups,
    ))


def value_order(value):
    """A sort key for config values of mixed types: numbers by value, then strings, then anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (2, 0.0, json.dumps(value, sort_keys=True, default=str))


def _json_safe(obj):
    """NaN/inf -> None and numpy -> Python, so the report is strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def compare_report(records: list[dict], margin: float | None = None, by: str | None = None, *,
                   metrics=DEFAULT_METRICS, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> dict:
    """The band table and the paired comparison of each metric, as one JSON-serialisable dict."""
    counts = dict.fromkeys(STATUSES, 0)
    for rec in records:
        counts[rec.get("status")] = counts.get(rec.get("status"), 0) + 1
    return _json_safe(dict(
        n_runs=len(records), counts=counts, by=by, band_table=band_table(records),
        paired={m: paired(records, m, margin=margin, by=by, alpha=alpha, n_boot=n_boot, seed=seed)
                for m in metrics},
        notes=[
            "d = parallel - sequential over pairs of runs whose configs differ only in topology.",
            "Pairs with a diverged or failed run are left out of the statistics and counted per topology: "
            "if one wiring diverges more often, its loss alone flatters it.",
            "Verdict: 'equivalent' when TOST p < alpha against the margin; otherwise a wiring is better only "
            "when the bootstrap CI of the mean d excludes 0; else 'inconclusive' (also with fewer than 3 pairs).",
        ],
    ))


# -- text rendering ---------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def text_table(headers: list[str], rows: list[list], align: str) -> str:
    """Aligned plain-text columns; `align` has one 'l' or 'r' per column."""
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _ci(lo, hi) -> str:
    return "-" if lo is None else f"[{lo:.4g}, {hi:.4g}]"


def format_report(report: dict) -> str:
    """The report as plain-text tables, readable in a terminal."""
    counts = report["counts"]
    out = [
        "depthlab compare: parallel (shallow) vs sequential (deep) wiring at equal parameters",
        f"runs: {report['n_runs']} (" + ", ".join(f"{s} {n}" for s, n in counts.items()) + ")",
        "",
        "Mean final metrics of done runs by Q band (Q = training examples x outputs / parameters)",
    ]
    rows = [[r["dataset"], r["topology"], r["q_band"], r["n"], r["train_loss_mean"], r["train_loss_std"],
             r["val_loss_mean"], r["val_loss_std"], r["train_acc_mean"], r["val_acc_mean"]]
            for r in report["band_table"]]
    headers = ["dataset", "topology", "Q band", "n", "train_loss", "sd", "val_loss", "sd", "train_acc", "val_acc"]
    out.append(text_table(headers, rows, "lllrrrrrrr") if rows else "(no done runs)")

    by = report.get("by")
    for metric, res in report["paired"].items():
        p = res["pairs"]
        better = "higher" if res["higher_is_better"] else "lower"
        favours = "d > 0" if res["higher_is_better"] else "d < 0"
        out += [
            "",
            f"{metric}: d = parallel - sequential per pair; {better} is better, so {favours} favours parallel",
            f"  {res['ci_level']:.0%} percentile-bootstrap CI of mean d ({res['n_boot']} resamples, seed "
            f"{res['seed']}); TOST equivalence at alpha {res['alpha']:g}; margin: {res['margin_rule']}",
            f"  pairs: {p['n_pairs']} compared of {p['n_found']} found; {p['n_excluded']} excluded with a diverged "
            f"or failed run (diverged: sequential {p['diverged']['sequential']}, parallel "
            f"{p['diverged']['parallel']}; failed: sequential {p['failed']['sequential']}, parallel "
            f"{p['failed']['parallel']}); {p['n_unfinished']} unfinished; {p['n_missing']} missing {metric}; "
            f"{p['n_unpaired']} runs without partner; {p['n_duplicate']} runs in ambiguous duplicates; "
            f"{p['n_identical']} runs of one-block pairs (identical wirings) left out",
        ]
        headers = ["dataset", "Q band"] + ([by] if by else []) + [
            "pairs", "excl", "mean d", "median d", "CI", "wins par/seq/tie", "margin", "TOST p", "verdict"]
        rows = [
            [g["dataset"], g["q_band"]] + ([_fmt(g["by_value"])] if by else []) + [
                g["n_pairs"], g["n_excluded"], g["mean"], g["median"], _ci(g["ci_low"], g["ci_high"]),
                f"{g['wins_parallel']}/{g['wins_sequential']}/{g['ties']}", g["margin"],
                None if g["tost_p"] is None else float(f"{g['tost_p']:.3g}"), g["verdict"]]
            for g in res["groups"]
        ]
        align = "ll" + ("l" if by else "") + "rrrrlrrrl"
        out.append(text_table(headers, rows, align) if rows else "(no sequential/parallel pairs)")

    out += ["", "notes:"] + [f"- {n}" for n in report.get("notes", [])]
    return "\n".join(out) + "\n"
