"""The study's answer, generated from its stored runs: per design its metric and cost, per lever the paired verdicts
(`depthlab.analysis.compare.paired` with the lever's contrast), per budget the recommendation, and which contrasts
are still undecided (they get more seeds).

Every number here is read from the store or computed from what it holds; nothing is estimated. The rules:

- **Looks.** A contrast is tested after each round of seeds, up to `StudySpec.looks` times. Each look tests at
  alpha / looks (Bonferroni over the planned looks), so that stopping as soon as a verdict is reached keeps the
  chance of any false verdict of a contrast within alpha, however many looks it took.
- **Verdicts** are compare's: "equivalent" (TOST within the margin), "<value> better" (the CI excludes 0), both,
  or "inconclusive"; a contrast with fewer than 3 learned pairs says "not learned", and more seeds do not help it.
- **Recommendation.** The best design by the metric's mean; the designs not worse than it by more than the margin
  (the CI of their paired difference to the best lies above -margin); among those the cheapest to run (latency at
  batch 1, then parameters, then FLOPs), latencies within `LATENCY_TIE` of the fastest counting as equal. It is
  undecided while a design whose comparison with the best is still open is cheaper than the choice: more seeds,
  or a higher level, would decide it.
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict

import numpy as np

from depthlab.analysis.compare import MIN_PAIRS, bootstrap_ci, paired, run_state
from depthlab.records import config_id
from depthlab.study.design import BUDGET_TOLERANCE, LEVERS, Design, StudySpec, lever_designs, lever_pairs


@functools.lru_cache(maxsize=None)
def _key_of(config_json: str) -> str:
    import json

    return config_id({**json.loads(config_json), "seed": 0})


def design_key(config: dict) -> str:
    """The design a run belongs to: its config's id with the seed at 0 (`Design.key`)."""
    from depthlab.records import canonical_json

    return _key_of(canonical_json(dict(config)))


def runs_by_design(designs: list[Design], records) -> dict[str, list]:
    """{design key: its runs among `records`, by seed}."""
    keys = {d.key for d in designs}
    out: dict[str, list] = {k: [] for k in keys}
    for rec in records:
        key = design_key(rec.config)
        if key in out:
            out[key].append(rec)
    for runs in out.values():
        runs.sort(key=lambda r: r.config.get("seed", 0))
    return out


def _learned(runs) -> list:
    return [r for r in runs if run_state(r) == "done"]


def _value(rec, metric: str):
    value = rec.metric(metric)
    return None if value is None or not np.isfinite(value) else float(value)


def design_row(spec: StudySpec, d: Design, runs: list, cost: dict | None) -> dict:
    """What the study knows of one design: its fields, seeds, learned runs, metric and cost."""
    learned = [r for r in _learned(runs) if _value(r, spec.metric) is not None]
    values = [_value(r, spec.metric) for r in learned]
    mean = lambda metric: (float(np.mean([_value(r, metric) for r in learned if _value(r, metric) is not None]))
                           if any(_value(r, metric) is not None for r in learned) else None)
    config = d.config(0)
    cost = cost or {}
    return dict(
        name=d.name, label=d.label, key=d.key, levers=list(d.levers), blocks=config.blocks, width=config.width,
        hidden=list(config.block_hidden), topology=config.topology, branch=config.branch, kernel=config.kernel,
        norm=config.norm, params=cost.get("params", _stored_params(learned)), flops=cost.get("flops"),
        seeds=len(runs), n_done=sum(r.status == "done" for r in runs), n_learned=len(learned),
        states=dict(Counter(run_state(r) for r in runs)),
        metric_mean=float(np.mean(values)) if values else None,
        metric_std=float(np.std(values, ddof=1)) if len(values) > 1 else None,
        val_acc_mean=mean("val_acc"), val_loss_mean=mean("val_loss"), test_acc_mean=mean("test_acc"),
        train_samples_per_s=cost.get("train_samples_per_s"), latency_b1_ms=cost.get("latency_b1_ms"),
        latency_b256_ms=cost.get("latency_b256_ms"),
        train_seconds=float(sum(r.train_seconds or 0 for r in runs)) or None,
    )


def _stored_params(runs) -> int | None:
    return runs[0].params if runs else None


def lever_result(spec: StudySpec, designs: list[Design], runs: dict, budget: int, lever: str,
                 rows: dict[str, dict], skipped: str | None = None) -> dict:
    """One lever at one budget: its verdicts, pair by pair, with the means they rest on and why each stopped."""
    info = LEVERS[lever]
    out = dict(lever=lever, title=info.title, question=info.question, reference=info.reference,
               contrast=info.contrast, skipped=skipped, verdicts=[])
    if skipped or not info.trains:
        return out
    for a, b in lever_pairs(designs, lever, budget):
        out["verdicts"].append(_verdict(spec, info.contrast, a, b, runs, rows))
    return out


def _verdict(spec: StudySpec, contrast: str, a: Design, b: Design, runs: dict, rows: dict) -> dict:
    records = runs[a.key] + runs[b.key]
    value = lambda d: _contrast_value(d, contrast)
    res = paired(records, spec.metric, margin=spec.margin, alpha=spec.alpha / spec.looks, contrast=contrast,
                 a=value(a), b=value(b), n_boot=4000)
    group = next((g for g in res["groups"] if g.get("q_band") == "all"), None) or {}
    verdict = group.get("verdict", "inconclusive")
    for label, name in ((res["a_label"], a.name), (res["b_label"], b.name)):
        verdict = verdict.replace(label, name)  # the design's name, not its compound field values
    seeds = min(rows[a.key]["seeds"], rows[b.key]["seeds"])
    decided = verdict != "inconclusive" and not verdict.startswith("not learned")
    stopped = ("not learned" if verdict.startswith("not learned") else "decided" if decided
               else f"seed cap ({spec.max_seeds})" if seeds >= spec.max_seeds else "more seeds")
    return dict(a=a.name, b=b.name, a_label=a.label, b_label=b.label, a_key=a.key, b_key=b.key,
                a_mean=rows[a.key]["metric_mean"], b_mean=rows[b.key]["metric_mean"],
                n_pairs=group.get("n_pairs", 0), seeds=seeds, d_mean=group.get("mean"),
                ci_low=group.get("ci_low"), ci_high=group.get("ci_high"), tost_p=group.get("tost_p"),
                verdict=verdict, decided=decided, stopped=stopped)


def _contrast_value(d: Design, contrast: str):
    """The design's value of a (compound) contrast, as compare reads it from a run's config."""
    from depthlab.analysis.compare import contrast_fields

    config = d.config(0).to_dict()
    names = contrast_fields(contrast)
    values = [list(config[f]) if isinstance(config[f], tuple) else config[f] for f in names]
    return values if len(names) > 1 else values[0]


def _paired_to_best(spec: StudySpec, best: list, other: list) -> dict:
    """d = other - best (in the direction where positive is better) over the seeds both learned: mean and CI."""
    sign = 1.0 if spec.higher_is_better else -1.0
    by_seed = {r.config.get("seed"): _value(r, spec.metric) for r in _learned(best)}
    d = [sign * (_value(r, spec.metric) - by_seed[r.config.get("seed")]) for r in _learned(other)
         if r.config.get("seed") in by_seed and _value(r, spec.metric) is not None
         and by_seed[r.config.get("seed")] is not None]
    if len(d) < MIN_PAIRS:
        return dict(n=len(d), mean=float(np.mean(d)) if d else None, ci_low=None, ci_high=None)
    lo, hi = bootstrap_ci(d, spec.alpha / spec.looks, n_boot=4000)
    return dict(n=len(d), mean=float(np.mean(d)), ci_low=lo, ci_high=hi)


def _cost_order(row: dict) -> tuple:
    latency = row.get("latency_b1_ms")
    return (latency if latency is not None else float("inf"), row.get("params") or 0)


# Batch-1 latencies within this fraction of the fastest count as equal: the same networks measured in two quick
# MNIST studies on one machine moved by up to 7% between runs, and under load two designs 1.5% apart swapped
# places by 12%; a choice between them made by that noise would change from run to run. Fewer parameters, then
# fewer FLOPs, then the latency itself decide among them.
LATENCY_TIE = 0.10


def _cheapest(rows: list[dict]) -> dict:
    """The cheapest of `rows` to run (the module docstring): the fewest parameters, then FLOPs, among those whose
    batch-1 latency is within LATENCY_TIE of the fastest (all of them when none was measured)."""
    fastest = min(_cost_order(r)[0] for r in rows)
    tied = [r for r in rows if _cost_order(r)[0] <= fastest * (1 + LATENCY_TIE)] or rows
    return min(tied, key=lambda r: (r.get("params") or 0, r.get("flops") or float("inf"), _cost_order(r)[0]))


def recommend(spec: StudySpec, budget: int, rows: list[dict], runs: dict) -> dict:
    """The recommendation at one budget (see the module docstring), from its designs' rows and runs. Designs whose
    inference parameters exceed the budget (the crop lever's mask: a sparse network still runs dense) are not
    candidates."""
    out = dict(decided=False, best=None, not_worse=[], choice=None, evidence=[], why="", what_would_decide=None,
               undecided=[])
    over = [r for r in rows if r.get("params") and r["params"] > budget * (1 + BUDGET_TOLERANCE)]
    ranked = [r for r in rows if r["n_learned"] >= MIN_PAIRS and r["metric_mean"] is not None and r not in over]
    out["over_budget"] = [r["name"] for r in over]  # a mask keeps its dense network's parameters: not a candidate
    if not ranked:
        out["why"] = f"no design has {MIN_PAIRS} learned runs yet"
        out["what_would_decide"] = "train the study (its runs are not finished or did not learn: a higher level)"
        return out
    sign = 1.0 if spec.higher_is_better else -1.0
    best = max(ranked, key=lambda r: sign * r["metric_mean"])
    out["best"] = best["name"]
    not_worse, open_ = [best], []
    for row in ranked:
        if row is best:
            continue
        d = _paired_to_best(spec, runs[best["key"]], runs[row["key"]])
        row_d = dict(row, d=d)
        if d["ci_low"] is not None and d["ci_low"] > -spec.margin:
            not_worse.append(row_d)
        elif d["ci_high"] is None or d["ci_high"] >= -spec.margin:
            open_.append(row_d)  # neither within the margin nor surely beyond it
    choice = _cheapest(not_worse)
    cheaper_open = [r for r in open_ if _cheapest([*not_worse, r]) is r]  # would be chosen, were it not worse
    out.update(not_worse=[r["name"] for r in not_worse], choice=choice["name"], decided=not cheaper_open,
               undecided=[r["name"] for r in cheaper_open], undecided_keys=[r["key"] for r in cheaper_open],
               best_key=best["key"])
    out["evidence"] = [_evidence(spec, best, r) for r in sorted(not_worse[1:] + cheaper_open, key=_cost_order)]
    out["why"] = _why(spec, best, choice)
    if cheaper_open:
        names = ", ".join(r["name"] for r in cheaper_open)
        out["what_would_decide"] = (f"more seeds for {names} against {best['name']} (each is cheaper than "
                                    f"{choice['name']}, and its difference to the best is not yet within or beyond "
                                    f"the margin {spec.margin:g}): a higher level raises the seed cap")
    return out


def _fmt_cost(row: dict) -> str:
    if row.get("latency_b1_ms") is not None:
        return f"{row['latency_b1_ms']:.3g} ms at batch 1"
    return f"{row.get('params') or 0:,} parameters"


def _evidence(spec: StudySpec, best: dict, row: dict) -> str:
    d = row["d"]
    ci = (f"95% CI {d['ci_low']:+.3f}..{d['ci_high']:+.3f}" if d["ci_low"] is not None
          else f"{d['n']} paired seeds, too few for a CI")
    return (f"{row['name']}: {spec.metric} {row['metric_mean']:.4f} against {best['metric_mean']:.4f} "
            f"({best['name']}), d {d['mean']:+.4f} ({ci}); {_fmt_cost(row)} against {_fmt_cost(best)}")


def _why(spec: StudySpec, best: dict, choice: dict) -> str:
    rule = f"latencies within {LATENCY_TIE:.0%} of the fastest count as equal, then fewer parameters"
    if choice is best:
        return (f"{best['name']} has the best {spec.metric} ({best['metric_mean']:.4f}) and no design within the "
                f"margin runs cheaper ({rule})")
    return (f"{choice['name']} is within {spec.margin:g} of the best {spec.metric} ({best['name']}, "
            f"{best['metric_mean']:.4f}) and the cheapest of those that are ({_fmt_cost(choice)}; {rule})")


def robustness(spec: StudySpec, designs: list[Design], budget: int, runs: dict, shift_rows: list[dict],
               skipped: str | None) -> dict:
    """Mean accuracy under each corruption, method and batch size, per frontier design (over its seeds)."""
    out = dict(skipped=skipped, methods=list(spec.shift_methods), batch_sizes=list(spec.shift_batch_sizes),
               corruptions=[], precisions=[], cells=[])
    if skipped:
        return out
    frontier = lever_designs(designs, "depth", budget)
    run_design = {r.run_id: d.name for d in frontier for r in runs[d.key]}
    cells: dict[tuple, list] = defaultdict(list)
    for row in shift_rows:
        name = run_design.get(row["run_id"])
        if name is not None and row["status"] == "done" and row["accuracy"] is not None:
            cells[(name, row["corruption"], row["method"], row["batch_size"])].append(row["accuracy"])
    out["corruptions"] = sorted({k[1] for k in cells})
    out["precisions"] = sorted({(row.get("env") or {}).get("precision") or "?" for row in shift_rows
                                if row["run_id"] in run_design})
    out["cells"] = [dict(design=k[0], corruption=k[1], method=k[2], batch_size=k[3], accuracy=float(np.mean(v)),
                         n=len(v)) for k, v in sorted(cells.items())]
    return out


def undecided_keys(result: dict) -> set[str]:
    """The designs of contrasts still open that more seeds could decide: lever verdicts stopped for "more
    seeds", and designs cheaper than the recommendation whose comparison with the best is open."""
    keys = set()
    for budget in result["budgets"]:
        for lever in budget["levers"]:
            for v in lever["verdicts"]:
                if v["stopped"] == "more seeds":
                    keys |= {v["a_key"], v["b_key"]}
        rec = budget["recommendation"]
        if rec.get("undecided_keys"):
            keys |= {rec["best_key"], *rec["undecided_keys"]}
    return keys


def next_seeds(spec: StudySpec, seeds: dict[str, int], result: dict) -> dict[str, int] | None:
    """The seeds of the next round ({design key: n}), or None when no open contrast can grow any more."""
    grown = dict(seeds)
    for key in undecided_keys(result):
        have = seeds.get(key, spec.seeds)
        if have < spec.max_seeds:
            grown[key] = min(spec.max_seeds, have + spec.seed_step)
    return grown if grown != seeds else None


def study_result(spec: StudySpec, designs: list[Design], records, costs: dict, shift_rows: list[dict],
                 *, skipped: dict | None = None, env: dict | None = None) -> dict:
    """The whole answer as one JSON-serialisable dict (the schema the report and --json share); `costs`:
    {design key: cost}; `skipped`: {lever: why} for levers not studied."""
    skipped = skipped or {}
    runs = runs_by_design(designs, records)
    out = dict(study=spec.name, dataset=spec.dataset, level=spec.level, metric=spec.metric,
               higher_is_better=spec.higher_is_better, margin=spec.margin, alpha=spec.alpha, looks=spec.looks,
               alpha_per_look=spec.alpha / spec.looks, seeds_first=spec.seeds, max_seeds=spec.max_seeds,
               levers=list(spec.levers), skipped=skipped, **(env or {}), budgets=[])
    for budget in spec.budgets:
        mine = [d for d in designs if d.budget == budget]
        rows = {d.key: design_row(spec, d, runs[d.key], costs.get(d.key)) for d in mine}
        levers = [lever_result(spec, designs, runs, budget, lever, rows, skipped.get(lever))
                  for lever in spec.levers if LEVERS[lever].trains]
        out["budgets"].append(dict(
            budget=budget, designs=list(rows.values()), levers=levers,
            recommendation=recommend(spec, budget, list(rows.values()), runs),
            robustness=robustness(spec, designs, budget, runs, shift_rows, skipped.get("shift"))
            if "shift" in spec.levers else dict(skipped="not asked for (--levers)", methods=[], batch_sizes=[],
                                                corruptions=[], cells=[])))
    return out
