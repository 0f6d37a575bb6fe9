"""The study's decision rule on hand-made records with known statistics: a clear winner; a tie resolved by cost;
everything inconclusive (which must say so); seeds added only where a contrast is undecided, and never past the
cap; nothing recommended from runs that did not learn."""

import numpy as np
import pytest

from depthlab.records import RunRecord
from depthlab.study import decide
from depthlab.study.design import StudySpec, designs

SPEC = StudySpec(name="t", dataset="synthetic", budgets=(6000,), depths=(1, 2), levers=("depth", "wiring"),
                 seeds=3, max_seeds=5, seed_step=2)
DESIGNS = designs(SPEC)  # d1, d2 (depth); d2, d2-parallel (wiring)
BY_NAME = {d.name: d for d in DESIGNS}


def records(accuracy: dict, seeds: int = 3, noise: float = 0.0, learned: bool = True, rng_seed: int = 0) -> list:
    """Runs of each named design at `accuracy[name]`, `seeds` seeds, plus Gaussian noise per run."""
    rng = np.random.default_rng(rng_seed)
    out = []
    for name, acc in accuracy.items():
        for seed in range(seeds):
            config = BY_NAME[name].config(seed).to_dict()
            value = acc[seed] if isinstance(acc, list) else acc + noise * rng.standard_normal()
            out.append(RunRecord.make(config, status="done", run_id=f"{name}-{seed}", val_acc=float(value),
                                      train_loss=0.3 if learned else 2.3, val_loss=0.3))
    return out


def costs(latency: dict) -> dict:
    return {BY_NAME[n].key: {"params": 6000, "latency_b1_ms": ms} for n, ms in latency.items()}


def result(recs, latency=None):
    latency = latency or {"d1": 1.0, "d2": 1.0, "d2-parallel": 1.0}
    return decide.study_result(SPEC, DESIGNS, recs, costs(latency), [])


def test_a_clear_winner_is_recommended_with_its_evidence():
    res = result(records({"d1": 0.80, "d2": 0.95, "d2-parallel": 0.85}, noise=0.002))
    rec = res["budgets"][0]["recommendation"]
    assert rec["decided"] and rec["best"] == rec["choice"] == "d2" and rec["not_worse"] == ["d2"]
    depth = next(lv for lv in res["budgets"][0]["levers"] if lv["lever"] == "depth")
    (verdict,) = depth["verdicts"]
    assert verdict["verdict"] == "d2 better" and verdict["decided"] and verdict["stopped"] == "decided"
    assert verdict["a_mean"] == pytest.approx(0.80, abs=0.01) and verdict["b_mean"] == pytest.approx(0.95, abs=0.01)
    assert decide.next_seeds(SPEC, {}, res) is None  # nothing open: no more seeds


def test_a_tie_is_resolved_by_cost():
    recs = records({"d1": 0.80, "d2": 0.951, "d2-parallel": 0.950}, noise=0.001)
    res = result(recs, latency={"d1": 0.1, "d2": 2.0, "d2-parallel": 0.5})
    rec = res["budgets"][0]["recommendation"]
    assert rec["best"] == "d2" and set(rec["not_worse"]) == {"d2", "d2-parallel"}
    assert rec["choice"] == "d2-parallel" and rec["decided"]  # d1 is cheaper, but surely worse
    assert any(e.startswith("d2-parallel:") and "0.5 ms" in e for e in rec["evidence"])


def test_latencies_within_the_tie_margin_choose_by_parameters_whatever_their_order():
    """Two designs equally good and equally fast within latency noise: the choice must not follow the noise."""
    recs = records({"d1": 0.80, "d2": 0.951, "d2-parallel": 0.950}, noise=0.001)
    for fast, slow in (("d2", "d2-parallel"), ("d2-parallel", "d2")):
        cost = {"d1": {"params": 6000, "latency_b1_ms": 0.1}, fast: {"params": 6000, "latency_b1_ms": 0.40},
                slow: {"params": 5950, "latency_b1_ms": 0.40 * (1 + decide.LATENCY_TIE * 0.9)}}
        res = decide.study_result(SPEC, DESIGNS, recs, {BY_NAME[n].key: c for n, c in cost.items()}, [])
        rec = res["budgets"][0]["recommendation"]
        assert rec["choice"] == slow and rec["decided"]  # within the tie: the fewer parameters
        assert "count as equal" in rec["why"]
    cost[slow]["latency_b1_ms"] = 0.40 * (1 + decide.LATENCY_TIE * 1.5)  # beyond the tie: the faster one
    res = decide.study_result(SPEC, DESIGNS, recs, {BY_NAME[n].key: c for n, c in cost.items()}, [])
    assert res["budgets"][0]["recommendation"]["choice"] == fast


def test_everything_inconclusive_says_so_and_what_would_decide():
    recs = records({"d1": [0.80, 0.95, 0.88], "d2": [0.90, 0.86, 0.93], "d2-parallel": [0.95, 0.80, 0.90]})
    res = result(recs, latency={"d1": 0.1, "d2": 2.0, "d2-parallel": 0.5})  # the best (d2) is the dearest
    budget = res["budgets"][0]
    rec = budget["recommendation"]
    assert not rec["decided"] and "more seeds" in rec["what_would_decide"]
    verdicts = [v for lv in budget["levers"] for v in lv["verdicts"]]
    assert all(v["verdict"] == "inconclusive" and v["stopped"] == "more seeds" for v in verdicts)


def test_seeds_grow_only_where_undecided_and_stop_at_the_cap():
    # d1 against d2 is decided (d = 0.2 at every seed); d2 against d2-parallel is not
    spread = [0.95, 0.80, 0.92, 0.97, 0.83]
    recs = records({"d1": 0.70, "d2": 0.90, "d2-parallel": spread[:3]})
    res = result(recs, latency={"d1": 3.0, "d2": 2.0, "d2-parallel": 3.0})
    grown = decide.next_seeds(SPEC, {}, res)
    assert grown == {BY_NAME["d2"].key: 5, BY_NAME["d2-parallel"].key: 5}
    capped = result(records({"d1": 0.70, "d2": 0.90, "d2-parallel": spread}, seeds=5),
                    latency={"d1": 3.0, "d2": 2.0, "d2-parallel": 3.0})
    wiring = next(lv for lv in capped["budgets"][0]["levers"] if lv["lever"] == "wiring")
    assert wiring["verdicts"][0]["stopped"] == "seed cap (5)"
    assert decide.next_seeds(SPEC, grown, capped) is None


def test_looks_are_corrected_for():
    assert SPEC.looks == 2
    res = result(records({"d1": 0.80, "d2": 0.95, "d2-parallel": 0.85}))
    assert res["alpha_per_look"] == pytest.approx(0.025)


def test_runs_that_did_not_learn_get_no_verdict_and_no_recommendation():
    res = result(records({"d1": 0.11, "d2": 0.12, "d2-parallel": 0.10}, learned=False))
    budget = res["budgets"][0]
    assert budget["recommendation"]["choice"] is None and not budget["recommendation"]["decided"]
    for lever in budget["levers"]:
        for v in lever["verdicts"]:
            assert v["verdict"].startswith("not learned") and v["stopped"] == "not learned"
            assert "equivalent" not in v["verdict"] and "better" not in v["verdict"]


@pytest.mark.parametrize("width", [80, 120])
def test_the_answer_fits_the_terminal_with_accuracy_beside_every_verdict(width):
    from depthlab.study.text import format_study

    res = result(records({"d1": 0.80, "d2": 0.95, "d2-parallel": 0.85}, noise=0.002))
    text = format_study(res, width=width)
    assert max(map(len, text.splitlines())) <= width
    assert text.index("recommended: d2") < text.index("levers")
    verdict_lines = [line for line in text.splitlines() if line.lstrip().startswith(("depth ", "wiring "))]
    assert len(verdict_lines) == 2 and all(" 0.8" in line or " 0.9" in line for line in verdict_lines)


def test_the_header_says_how_the_study_computed_where_it_is_not_the_training_precision():
    from depthlab.study.text import format_study

    res = result(records({"d1": 0.80, "d2": 0.95, "d2-parallel": 0.85}))
    head = lambda **env: format_study({**res, "device": "cpu", **env}, width=300).splitlines()[0]  # noqa: E731
    assert "cpu in bf16 (channels_last; latencies in fp32)," in head(precision="bf16", layout="channels_last",
                                                                      inference_precision="fp32")
    assert "cpu in fp32 (channels_last)," in head(precision="fp32", layout="channels_last", inference_precision="fp32")
    assert "cpu in fp32," in head(precision="fp32")  # a result from before layouts were recorded
