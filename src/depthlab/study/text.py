"""The study's answer on one screen: per budget the recommendation, then one line per lever verdict with the two
designs' metric beside it (a verdict is worth what the models learned), then the robustness summary."""

from __future__ import annotations

import textwrap


def _num(value, fmt: str = ".4f") -> str:
    return "–" if value is None else format(value, fmt)


def _ci(v: dict) -> str:
    if v.get("ci_low") is None:
        return "no CI"
    return f"[{v['ci_low']:+.3f}, {v['ci_high']:+.3f}]"


def _cost(row: dict) -> str:
    parts = [f"{row['params']:,} params" if row.get("params") else None,
             f"{row['latency_b1_ms']:.2f} ms at batch 1" if row.get("latency_b1_ms") is not None else None,
             f"{row['train_samples_per_s']:,.0f} samples/s training" if row.get("train_samples_per_s") else None]
    return ", ".join(p for p in parts if p)


def how_measured(result: dict) -> str:
    """The header's " (channels_last; latencies in fp32)": the training layout, and the precision latencies and the
    robustness lever were measured in where it is not the training one."""
    parts = [result["layout"]] if result.get("layout") else []
    inference = result.get("inference_precision")
    if inference and inference != result.get("precision"):
        parts.append(f"latencies in {inference}")
    return f" ({'; '.join(parts)})" if parts else ""


def format_study(result: dict, width: int = 100) -> str:
    """The terminal's view of `decide.study_result`, lines at most `width` characters wide."""
    seconds = result.get("seconds") or {}
    lines = [f"study {result['study']}: {result['dataset']}, level {result['level']}, metric {result['metric']} "
             f"(margin {result['margin']:g}; each of {result['looks']} looks at alpha "
             f"{result['alpha_per_look']:.3g}); {result.get('device', '?')} in {result.get('precision', '?')}"
             f"{how_measured(result)}, "
             f"{_num(seconds.get('total'), '.0f')} s ({_num(seconds.get('training'), '.0f')} s training)"]
    for budget in result["budgets"]:
        lines += [""] + _budget_lines(result, budget)
    for lever, why in (result.get("skipped") or {}).items():
        lines.append(f"lever {lever} skipped: {why}")
    return "\n".join(_wrap(line, width) for line in lines)


def _wrap(line: str, width: int) -> str:
    indent = len(line) - len(line.lstrip())
    return "\n".join(textwrap.wrap(line, width, subsequent_indent=" " * (indent + 4), break_long_words=False,
                                   break_on_hyphens=False)) or line


def _budget_lines(result: dict, budget: dict) -> list[str]:
    rows = {d["name"]: d for d in budget["designs"]}
    rec = budget["recommendation"]
    metric = result["metric"]
    lines = [f"budget {budget['budget']:,} parameters: {len(rows)} designs, "
             f"{sum(d['seeds'] for d in rows.values())} runs ({sum(d['n_learned'] for d in rows.values())} learned)"]
    if rec.get("choice"):
        choice = rows[rec["choice"]]
        state = "recommended" if rec["decided"] else "undecided, leaning to"
        lines.append(f"  {state}: {choice['name']} ({choice['label']}): {metric} {_num(choice['metric_mean'])}, "
                     f"{_cost(choice)}")
        lines.append(f"    best {metric}: {rec['best']} ({_num(rows[rec['best']]['metric_mean'])}); not worse by more "
                     f"than {result['margin']:g}: {', '.join(rec['not_worse'])}")
        lines.append(f"    why: {rec['why']}")
        lines += [f"    evidence: {e}" for e in rec["evidence"][:4]]
    else:
        lines.append(f"  no recommendation: {rec.get('why')}")
    if rec.get("what_would_decide"):
        lines.append(f"    to decide: {rec['what_would_decide']}")
    lines.append(f"  levers (d = b - a in {metric}; seeds per design, why it stopped):")
    for lever in budget["levers"]:
        if lever.get("skipped"):
            lines.append(f"    {lever['lever']:<8} skipped: {lever['skipped']}")
            continue
        for v in lever["verdicts"]:
            lines.append(f"    {lever['lever']:<8} {v['a']} {_num(v['a_mean'])} vs {v['b']} {_num(v['b_mean'])}: "
                         f"d {_num(v['d_mean'], '+.4f')} {_ci(v)}, {v['verdict']} ({v['seeds']} seeds, "
                         f"{v['stopped']})")
    lines += _robustness_lines(budget.get("robustness") or {})
    return lines


def _robustness_lines(rob: dict) -> list[str]:
    if rob.get("skipped"):
        return [f"  robustness skipped: {rob['skipped']}"]
    if not rob.get("cells"):
        return []
    means: dict = {}
    for cell in rob["cells"]:
        means.setdefault((cell["design"], cell["method"], cell["batch_size"]), []).append(cell["accuracy"])
    designs = list(dict.fromkeys(c["design"] for c in rob["cells"]))
    measured = f", measured in {', '.join(rob['precisions'])}" if rob.get("precisions") else ""
    out = [f"  robustness (mean accuracy over {len(rob['corruptions'])} corruptions{measured}):"]
    for design in designs:
        parts = [f"{m} b{b} {sum(v) / len(v):.3f}" for (d, m, b), v in means.items() if d == design]
        out.append(f"    {design}: " + ", ".join(parts))
    return out
