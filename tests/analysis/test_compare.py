"""The paired comparison, on hand-made records whose answer is known."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from depthlab.errors import DepthlabError, SpecError
from depthlab.analysis.compare import (
    BAND_LABELS, N_BOOTSTRAP_MAX, band_table, bootstrap_ci, compare_report, format_answer, format_report, normal_ci,
    not_learned, pair_records, paired, paired_stats, q_band, tost_p,
)
from depthlab.records import RunRecord
from depthlab.results.store import Store


def run(i, topology, loss, *, dataset="mnist", q=5.0, head="gap", status="done", acc=None, kernel=3, **fields):
    """A record like Store.records() gives; `fields`: more config fields."""
    config = dict(dataset=dataset, topology=topology, blocks=4, width=8, kernel=kernel, head=head, seed=i, epochs=3,
                  **fields)
    return RunRecord.make(config, run_id=f"{topology}-{dataset}-{head}-{kernel}-{i}", status=status, params=1000,
                          q=q, val_loss=loss, train_loss=None if loss is None else loss / 2, val_acc=acc,
                          train_acc=acc, seconds=1.0)


def with_config(record, **changes):
    """The record with some config fields changed (None: removed)."""
    config = {k: v for k, v in {**record.config, **changes}.items() if v is not None}
    return replace(record, config=config)


def pairs(seq_losses, par_losses, start=0, **kw):
    out = []
    for i, (s, p) in enumerate(zip(seq_losses, par_losses), start):
        out += [run(i, "sequential", s, **kw), run(i, "parallel", p, **kw)]
    return out


def group(result, dataset="mnist", band="all", by_value=None):
    for g in result["groups"]:
        if g["dataset"] == dataset and g["q_band"] == band and g.get("by_value", None) == by_value:
            return g
    raise KeyError((dataset, band, by_value))


RNG = np.random.default_rng(12345)
BASE = 1.0 + RNG.normal(0, 0.2, 20)  # run-to-run spread that pairing removes
NOISE = RNG.normal(0, 0.01, 20)


# -- bands --------------------------------------------------------------------------------------------------------


def test_q_band_edges():
    assert BAND_LABELS == ["[0,1)", "[1,3)", "[3,10)", "[10,inf)"]
    cases = {0: "[0,1)", 0.999: "[0,1)", 1: "[1,3)", 2.999: "[1,3)", 3: "[3,10)", 9.99: "[3,10)", 10: "[10,inf)",
             1e9: "[10,inf)", math.inf: "[10,inf)", None: "n/a", float("nan"): "n/a"}
    for q, band in cases.items():
        assert q_band(q) == band, q
    with pytest.raises(ValueError):
        q_band(-1)


def test_band_table_exact():
    records = [
        run(0, "sequential", 1.0, q=0.5), run(1, "sequential", 2.0, q=0.5),
        run(2, "sequential", 4.0, q=1.0),  # q = 1 is in [1,3)
        run(3, "sequential", None, q=0.5, status="diverged"),  # not done: not in the table
        run(0, "parallel", 3.0, q=0.5, acc=0.5),
        run(0, "groups:2", 5.0, q=0.5),
        run(0, "sequential", 7.0, q=20, dataset="cifar10", acc=0.25), run(1, "sequential", 9.0, q=20, dataset="cifar10", acc=0.75),
    ]
    rows = band_table(records)
    assert [(r["dataset"], r["topology"], r["q_band"], r["n"]) for r in rows] == [
        ("cifar10", "sequential", "[10,inf)", 2),
        ("mnist", "sequential", "[0,1)", 2), ("mnist", "sequential", "[1,3)", 1),
        ("mnist", "parallel", "[0,1)", 1), ("mnist", "groups:2", "[0,1)", 1),
    ]
    c, s01, s13, p01, _ = rows
    assert c["val_loss_mean"] == 8.0 and c["val_loss_std"] == pytest.approx(math.sqrt(2))
    assert c["train_loss_mean"] == 4.0 and c["val_acc_mean"] == 0.5 and c["train_acc_mean"] == 0.5
    assert s01["val_loss_mean"] == 1.5 and s01["val_loss_std"] == pytest.approx(math.sqrt(0.5))
    assert s01["train_loss_mean"] == 0.75 and s01["val_acc_mean"] is None
    assert s13["val_loss_mean"] == 4.0 and s13["val_loss_std"] is None
    assert p01["val_loss_mean"] == 3.0 and p01["val_acc_mean"] == 0.5


# -- verdicts -----------------------------------------------------------------------------------------------------


def test_parallel_clearly_better():
    seq = BASE
    par = BASE - 0.1 + NOISE
    res = paired(pairs(seq, par))
    g = group(res)
    d = par - seq
    assert g["n_pairs"] == 20 and g["mean"] == pytest.approx(d.mean()) and g["median"] == pytest.approx(np.median(d))
    assert g["ci_high"] < 0 and g["ci_low"] < d.mean() < g["ci_high"]
    assert (g["wins_b"], g["wins_a"], g["ties"]) == (20, 0, 0)
    assert g["margin"] == pytest.approx(0.05 * np.concatenate([seq, par]).mean(), rel=1e-2)
    assert g["tost_p"] > 0.05  # a 0.1 gap is not within a ~0.05 margin
    assert g["verdict"] == "parallel better"
    assert res["margin"] is None and res["margin_rule"].startswith("relative 5% of mean")
    assert res["difference"] == "parallel - sequential" and res["pairs"]["n_pairs"] == 20
    assert (res["a"], res["b"]) == ("sequential", "parallel")


def test_sequential_clearly_better():
    g = group(paired(pairs(BASE, BASE + 0.1 + NOISE)))
    assert g["ci_low"] > 0 and (g["wins_b"], g["wins_a"]) == (0, 20)
    assert g["verdict"] == "sequential better"


def test_tiny_differences_are_equivalent():
    x = np.array([0.001, -0.001] * 10)
    g = group(paired(pairs(1 + x, 1 - x)))  # pooled mean exactly 1 -> margin 0.05
    assert g["margin"] == 0.05 and g["mean"] == pytest.approx(0, abs=1e-12)
    assert g["ci_low"] < 0 < g["ci_high"]
    assert g["tost_p"] < 1e-10
    assert g["verdict"] == "equivalent within ±0.05"


def test_given_margin_is_absolute_and_stated():
    res = paired(pairs(BASE, BASE - 0.1 + NOISE), margin=0.2)
    g = group(res)
    assert g["margin"] == 0.2 and res["margin"] == 0.2 and res["margin_rule"] == "absolute 0.2 (given)"
    # equivalent within the given margin AND consistently better: the verdict says both, never one alone
    assert g["verdict"] == f"equivalent within ±0.2; parallel consistently better by {abs(g['mean']):.2g}"
    assert g["equivalent"] and g["favours"] == "b"
    with pytest.raises(SpecError, match="margin"):
        paired(pairs(BASE, BASE), margin=0)


def test_accuracy_higher_is_better():
    records = []
    for i in range(10):
        records += [run(i, "sequential", 1.0, acc=0.80 + i / 100), run(i, "parallel", 1.0, acc=0.85 + i / 100)]
    res = paired(records, metric="val_acc")
    g = group(res)
    assert res["higher_is_better"] and res["margin_rule"] == "absolute 0.01 (accuracy default)"
    assert g["margin"] == 0.01 and g["mean"] == pytest.approx(0.05) and g["ci_low"] == pytest.approx(0.05)
    assert (g["wins_b"], g["wins_a"]) == (10, 0)
    assert g["verdict"] == "parallel better"


def test_fewer_than_three_pairs_is_inconclusive():
    g = group(paired(pairs([1.0, 1.0], [0.5, 0.6])))
    assert g["n_pairs"] == 2 and g["mean"] == pytest.approx(-0.45) and g["wins_b"] == 2
    assert g["ci_low"] is None and g["ci_high"] is None and g["tost_p"] is None
    assert g["verdict"] == "inconclusive"


def test_noisy_differences_are_inconclusive():
    d = RNG.normal(0, 0.5, 20)
    g = group(paired(pairs(BASE, BASE + d - d.mean() + 0.01)))
    assert g["ci_low"] < 0 < g["ci_high"] and g["tost_p"] > 0.05
    assert g["verdict"] == "inconclusive"


# -- the statistics themselves ------------------------------------------------------------------------------------


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    d = np.random.default_rng(0).normal(0.3, 1.0, 200)
    ci = bootstrap_ci(d, seed=3)
    assert ci == bootstrap_ci(d, seed=3)  # deterministic for a seed
    assert ci != bootstrap_ci(d, seed=4)
    assert ci[0] < 0.3 < ci[1] and ci[0] < d.mean() < ci[1]
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))  # the normal-theory CI, which it should approximate
    assert ci[1] - ci[0] == pytest.approx(2 * half, rel=0.1)
    assert ci[0] == pytest.approx(d.mean() - half, abs=0.03)
    # large n is resampled in chunks: still the same interval
    big = np.random.default_rng(8).normal(-1.0, 1.0, 3000)
    lo, hi = bootstrap_ci(big, n_boot=2000)
    assert lo < big.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * big.std(ddof=1) / math.sqrt(3000), rel=0.1)
    # paired() reports the same seeded CI
    g = group(paired(pairs(BASE, BASE + d[:20]), seed=3))
    assert (g["ci_low"], g["ci_high"]) == pytest.approx(bootstrap_ci(d[:20], seed=3))


def test_bootstrap_ci_coverage_is_about_95_percent():
    rng = np.random.default_rng(2024)
    covered = sum(lo < 0.3 < hi for lo, hi in (bootstrap_ci(rng.normal(0.3, 1.0, 30), n_boot=1000, seed=k)
                                                for k in range(300)))
    assert 0.88 <= covered / 300 <= 0.99  # percentile CIs run a little narrow at n = 30


def test_groups_up_to_the_bootstrap_limit_are_resampled_as_before_larger_ones_take_the_normal_law():
    d = np.random.default_rng(5).normal(0.1, 1.0, N_BOOTSTRAP_MAX + 1)
    upto = paired_stats(d[:N_BOOTSTRAP_MAX], 0.05, n_boot=50, seed=4)
    assert upto["ci_method"] == "bootstrap"  # to the last digit: the same draws as ever
    assert (upto["ci_low"], upto["ci_high"]) == bootstrap_ci(d[:N_BOOTSTRAP_MAX], n_boot=50, seed=4)
    over = paired_stats(d, 0.05, n_boot=50, seed=4)
    assert over["ci_method"] == "normal" and (over["ci_low"], over["ci_high"]) == normal_ci(d)
    half = 1.959963984540054 * d.std(ddof=0) / math.sqrt(len(d))  # z of 97.5%, the resamples' own sd
    assert normal_ci(d) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-12)
    assert paired_stats(d[:2], 0.05)["ci_method"] is None  # too few pairs: no CI at all


def test_normal_ci_agrees_with_the_bootstrap_on_a_skewed_sample_of_6000():
    d = np.random.default_rng(7).exponential(1.0, 6000)  # skewness 2: the worst case of the usual metrics
    lo, hi = bootstrap_ci(d, n_boot=10000, seed=0)
    n_lo, n_hi = normal_ci(d)
    assert abs(n_lo - lo) < 0.02 * (hi - lo) and abs(n_hi - hi) < 0.02 * (hi - lo)


def test_a_report_says_which_groups_took_the_normal_approximation():
    n = N_BOOTSTRAP_MAX + 1
    d = np.random.default_rng(3).normal(0.01, 0.1, n)
    report = compare_report(pairs(np.ones(n), 1 + d), metrics=("val_loss",), n_boot=20)
    res = report["paired"]["val_loss"][0]
    assert [g["ci_method"] for g in res["groups"]] == ["normal", "normal"]  # all, and its one Q band
    assert (res["groups"][0]["ci_low"], res["groups"][0]["ci_high"]) == pytest.approx(normal_ci(d), rel=1e-9)
    assert "2 group(s) of over 5,000 pairs: its normal approximation" in format_report(report)
    assert "bootstrap CI, over 5,000 pairs its normal approximation]" in format_answer(report, width=200)
    small = compare_report(pairs(BASE, BASE + NOISE), metrics=("val_loss",), n_boot=20)
    assert "normal approximation" not in format_report(small)


def test_tost_matches_two_one_sided_scipy_tests():
    d = np.random.default_rng(1).normal(0.01, 0.05, 30)
    for margin in (0.02, 0.05, 0.1):
        lower = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        upper = stats.ttest_1samp(d, margin, alternative="less").pvalue
        assert tost_p(d, margin) == pytest.approx(max(lower, upper), rel=1e-9)
    g = group(paired(pairs(BASE[:20], BASE[:20] + d[:20]), margin=0.05))
    manual = max(stats.ttest_1samp(d[:20], -0.05, alternative="greater").pvalue,
                 stats.ttest_1samp(d[:20], 0.05, alternative="less").pvalue)
    assert g["tost_p"] == pytest.approx(manual, rel=1e-6)
    assert tost_p(np.full(5, 0.01), 0.05) == 0.0 and tost_p(np.full(5, 0.1), 0.05) == 1.0  # no spread


# -- grouping, pairing, exclusions --------------------------------------------------------------------------------


def test_groups_by_dataset_and_q_band():
    records = (pairs(BASE[:5], BASE[:5] - 0.1, q=1.0) + pairs(BASE[5:9], BASE[5:9] - 0.1, start=5, q=0.5)
               + pairs(BASE[:3], BASE[:3] + 0.2, dataset="cifar10", q=50))
    res = paired(records)
    assert [(g["dataset"], g["q_band"], g["n_pairs"]) for g in res["groups"]] == [
        ("cifar10", "all", 3), ("cifar10", "[10,inf)", 3),
        ("mnist", "all", 9), ("mnist", "[0,1)", 4), ("mnist", "[1,3)", 5),
    ]
    assert group(res, "cifar10")["verdict"] == "sequential better"
    assert group(res, "mnist", "[1,3)")["mean"] == pytest.approx(-0.1)


def test_by_splits_and_can_flip_the_verdict():
    records = (pairs(BASE[:10], BASE[:10] - 0.3 + NOISE[:10], head="gap")
               + pairs(BASE[10:], BASE[10:] + 0.3 + NOISE[10:], head="flatten"))
    res = paired(records, by="head")
    assert res["by"] == "head"
    assert group(res, by_value="gap")["verdict"] == "parallel better"
    assert group(res, by_value="flatten")["verdict"] == "sequential better"
    overall = group(res, by_value="all")
    assert overall["n_pairs"] == 20 and overall["verdict"] == "inconclusive"
    assert group(res, band="[3,10)", by_value="gap")["n_pairs"] == 10
    # head values sorted, "all" first
    assert [g["by_value"] for g in res["groups"] if g["q_band"] == "all"] == ["all", "flatten", "gap"]


def test_by_must_be_a_varied_config_field():
    records = pairs(BASE[:4], BASE[:4], head="gap")
    with pytest.raises(SpecError, match=r"by: got 'head'; allowed: seed"):  # head does not vary here
        paired(records, by="head")
    with pytest.raises(SpecError, match=r"by: got 'val_loss'"):
        paired(records, by="val_loss")
    with pytest.raises(SpecError, match="topology"):
        paired(records, by="topology")


def test_diverged_and_failed_pairs_are_counted_and_excluded():
    records = pairs(BASE[:10], BASE[:10] - 0.1)
    records += [run(20, "sequential", 1.0), run(20, "parallel", None, status="diverged"),
                run(21, "sequential", 1.0), run(21, "parallel", None, status="diverged"),
                run(22, "sequential", None, status="failed"), run(22, "parallel", 0.1),
                run(23, "sequential", None, status="diverged"), run(23, "parallel", None, status="diverged"),
                run(24, "sequential", 1.0), run(24, "parallel", None, status="pending"),
                run(25, "sequential", 1.0), run(25, "parallel", None),  # done but no val_loss
                run(26, "sequential", 1.0),  # no partner
                run(0, "groups:2", 1.0)]  # not a seq/par topology: ignored
    res = paired(records)
    g = group(res)
    assert g["n_pairs"] == 10 and g["mean"] == pytest.approx(-0.1)
    assert g["n_excluded"] == 4
    assert g["diverged"] == {"sequential": 1, "parallel": 3} and g["failed"] == {"sequential": 1, "parallel": 0}
    assert g["n_unfinished"] == 1 and g["n_missing"] == 1
    p = res["pairs"]
    assert (p["n_found"], p["n_pairs"], p["n_excluded"], p["n_unpaired"], p["n_duplicate"]) == (16, 10, 4, 1, 0)


def test_duplicates_are_skipped_and_counted():
    records = pairs(BASE[:3], BASE[:3] - 0.1)
    dup = replace(run(0, "parallel", 0.0), run_id="copy")
    pairs_, info = pair_records(records + [dup])
    assert len(pairs_) == 2 and info == {"n_unpaired": 0, "n_duplicate": 3, "n_identical": 0, "n_superseded": 0,
                                         "n_mixed_recipes": 0, "n_mixed_precisions": 0}
    assert [(s.config["seed"], p.config["seed"]) for s, p in pairs_] == [(1, 1), (2, 2)]


def test_pairs_that_mix_precisions_are_compared_and_said():
    """Precision is how a run was computed, not what it is: pairs across precisions are formed, counted in the
    comparison line, and a note says which precisions the runs have; runs recorded before precision was a
    choice (env amp "off"/"bf16") count as fp32/bf16."""
    records = [replace(r, env={"precision": "bf16"} if i < 4 else {"amp": "off"})
               for i, r in enumerate(pairs(BASE[:6], BASE[:6] - 0.1))]
    records[0] = replace(records[0], env={"precision": "fp32"})  # pair 0: fp32 vs bf16; 1: bf16 vs bf16; 2-5: fp32
    pairs_, info = pair_records(records)
    assert len(pairs_) == 6 and info["n_mixed_precisions"] == 1
    report = compare_report(records, metrics=("val_loss",), n_boot=200)
    assert report["precisions"] == {"bf16": 3, "fp32": 9}
    text = format_report(report)
    assert "1 pairs mix precisions (compared)" in text and "precision bf16, fp32" in text
    assert "several precisions (bf16 3, fp32 9)" in text
    one = compare_report([replace(r, env={"precision": "bf16"}) for r in records], metrics=("val_loss",), n_boot=200)
    assert "mix precisions" not in format_report(one) and "several precisions" not in format_report(one)


def test_pairs_from_a_store_use_the_config(tmp_path):
    """A diverged run records fewer epochs than planned; pairing must still use the config (epochs planned)."""
    store = Store(tmp_path / "s.sqlite")
    configs = [dict(dataset="mnist", topology=t, blocks=2, width=4, kernel=3, epochs=3, seed=s)
               for s in range(4) for t in ("sequential", "parallel")]
    ids = store.add_runs(configs, recipe=1)
    store.claim(ids, "me:1:x")
    for k, rid in enumerate(ids):
        diverged = k == 1
        loss = 1.0 if k % 2 == 0 else 0.8 + k / 1000
        store.finish(rid, "me:1:x", status="diverged" if diverged else "done",
                     final=dict(val_loss=float("nan") if diverged else loss, train_loss=loss),
                     history=[{}] if diverged else [{}, {}, {}], params=100, q=2.0, seconds=1.0, env={})
    records = store.records()
    store.close()
    res = paired(records)
    assert res["pairs"]["n_found"] == 4 and res["pairs"]["n_excluded"] == 1
    assert res["pairs"]["diverged"] == {"sequential": 0, "parallel": 1}
    assert group(res)["n_pairs"] == 3 and group(res, band="[1,3)")["n_pairs"] == 3


# -- the report ---------------------------------------------------------------------------------------------------


def test_compare_report_and_text():
    records = (pairs(BASE[:10], BASE[:10] - 0.1 + NOISE[:10], head="gap")
               + pairs(BASE[10:], BASE[10:] + 0.1 + NOISE[10:], head="flatten"))
    records[1] = replace(records[1], status="diverged", val_loss=float("nan"), train_loss=float("inf"))
    report = compare_report(records, by="head")
    text = json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere
    assert json.loads(text) == report
    assert set(report["paired"]) == {"val_loss", "train_loss", "val_acc"}
    assert all(len(v) == 1 for v in report["paired"].values())  # one pair of values: sequential, parallel
    assert report["counts"] == {"pending": 0, "running": 0, "done": 39, "diverged": 1, "failed": 0}
    assert report["band_table"] == band_table(records)

    out = format_report(report)
    assert "parallel better" in out and "sequential better" in out and "inconclusive" in out
    assert "diverged: sequential 0, parallel 1" in out and "relative 5% of mean" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("dataset  Q band  head"))
    col = lines[header].index("verdict")
    body = lines[header + 2: header + 2 + len(report["paired"]["val_loss"][0]["groups"])]
    assert body and all(line[col - 2:col] == "  " and line[col] != " " for line in body)  # aligned column
    assert lines[header + 1].startswith("-------")


def test_bad_metric():
    with pytest.raises(SpecError, match="metric: got 'loss'"):
        paired(pairs(BASE[:3], BASE[:3]), metric="loss")


def test_one_block_pairs_are_identical_networks_and_left_out():
    records = pairs(BASE[:3], BASE[:3] - 0.1)
    records[:2] = [with_config(r, blocks=1) for r in records[:2]]  # the seed-0 pair: the same network wired "two ways"
    pairs_, info = pair_records(records)
    assert len(pairs_) == 2 and info["n_identical"] == 2


# -- any field as the contrast ------------------------------------------------------------------------------------


def test_contrast_any_field_gives_hand_computed_statistics():
    records = []
    for seed in range(4):
        base = 1.0 + seed
        for kernel, loss in ((3, base), (5, base - 0.1), (7, base - 0.1 + (0.001 if seed % 2 else -0.001))):
            records.append(run(seed, "sequential", loss, kernel=kernel))
    report = compare_report(records, contrast="kernel", metrics=["val_loss"], margin=0.05)
    assert report["contrast"] == "kernel" and report["values"] == [3, 5, 7]
    k35, k37, k57 = report["paired"]["val_loss"]
    assert [(c["a"], c["b"]) for c in (k35, k37, k57)] == [(3, 5), (3, 7), (5, 7)]
    assert k35["difference"] == "kernel=5 - kernel=3"
    g = group(k35)
    # d = 5 - 3 = -0.1 in every pair: mean and median -0.1, 4 wins for kernel 5, no spread -> the CI is a point
    assert g["n_pairs"] == 4 and g["mean"] == pytest.approx(-0.1) and g["median"] == pytest.approx(-0.1)
    assert (g["wins_b"], g["wins_a"], g["ties"]) == (4, 0, 0)
    assert g["ci_low"] == pytest.approx(-0.1) and g["ci_high"] == pytest.approx(-0.1)
    assert g["tost_p"] == 1.0 and g["verdict"] == "kernel=5 better"  # |d| = 0.1 > margin 0.05
    g = group(k57)
    # d = 7 - 5 = ±0.001: mean 0, within the margin
    d = np.array([-0.001, 0.001, -0.001, 0.001])
    assert g["mean"] == pytest.approx(0, abs=1e-12) and (g["wins_b"], g["wins_a"]) == (2, 2)
    lower = stats.ttest_1samp(d, -0.05, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 0.05, alternative="less").pvalue
    assert g["tost_p"] == pytest.approx(max(lower, upper), rel=1e-6)
    assert g["verdict"] == "equivalent within ±0.05"
    text = format_report(report)
    assert "kernel: kernel=3 vs kernel=5 vs kernel=7" in text and "kernel=5 better" in text
    assert "wins kernel=5/kernel=3/tie" in text


def test_contrast_must_be_a_varied_field():
    with pytest.raises(SpecError, match="contrast: got 'norm'"):
        compare_report(pairs(BASE[:3], BASE[:3]), contrast="norm")


def test_contrast_topology_on_a_real_store_agrees_with_the_default(tmp_path):
    from depthlab.run.runner import run_sweep
    from depthlab.spec.grid import SweepSpec

    spec = SweepSpec.from_dict({
        "name": "c", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 128, "test_subset": 32,
                                  "width": 4, "stem_stride": 2, "batch_size": 32, "epochs": 1},
        "grid": {"topology": ["sequential", "parallel"], "seed": [0, 1, 2], "skip": [True, False]}})
    store = tmp_path / "s.sqlite"
    run_sweep(spec, store, device="cpu", progress=False)
    with Store(store) as s:
        records = s.records()
    default = compare_report(records, n_boot=500)
    explicit = compare_report(records, n_boot=500, contrast="topology")
    # one epoch on 96 examples: the runs pair (n_found) but may not have learned (then counted, not compared)
    assert default == explicit and default["paired"]["val_loss"][0]["pairs"]["n_found"] == 6
    skip = compare_report(records, n_boot=500, contrast="skip")
    assert skip["values"] == [False, True] and skip["paired"]["val_loss"][0]["pairs"]["n_found"] == 6


def test_a_verdict_never_contradicts_itself():
    # the demo's case: equivalent within ±0.01 while the CI excludes 0 and one side wins 9 of 10
    d = np.array([-0.005, -0.004, -0.006, -0.003, -0.007, -0.005, -0.004, -0.006, 0.001, -0.005])
    out = paired_stats(d, 0.01, higher_is_better=True, labels=("sequential", "parallel"))
    assert out["ci_high"] < 0 and out["tost_p"] < 0.05
    assert out["verdict"] == "equivalent within ±0.01; sequential consistently better by 0.0044"
    assert out["equivalent"] and out["favours"] == "a"


def test_runs_of_an_older_recipe_are_superseded_and_a_mix_is_refused():
    old = [replace(r, recipe=1) for r in pairs(BASE[:5], BASE[:5] - 0.1)]
    new = [replace(r, recipe=2, run_id=r.run_id + "-2", val_loss=r.val_loss + 1) for r in old]
    # every config retrained by recipe 2: only the new runs count, the old ones are counted as superseded
    report = compare_report(old + new, metrics=["val_loss"])
    assert report["recipes"] == {"recipes": [2], "n_superseded": 10, "n_mixed_recipes": 0}
    assert group(report["paired"]["val_loss"][0])["n_pairs"] == 5
    assert any("superseded" in n for n in report["notes"])
    # half retrained: pairs would mix recipes -> refused, unless asked
    mixed = old + [r for r in new if r.config["topology"] == "sequential"][:2]
    with pytest.raises(DepthlabError, match="mix recipes 1, 2.*--allow-mixed-recipes"):
        compare_report(mixed)
    allowed = compare_report(mixed, metrics=["val_loss"], allow_mixed_recipes=True)
    res = allowed["paired"]["val_loss"][0]
    assert res["pairs"]["n_mixed_recipes"] == 2 and group(res)["n_pairs"] == 5
    assert "2 pairs mix recipes (allowed)" in format_report(allowed)


def test_blown_up_runs_are_left_out_like_diverged_ones():
    """Adam at lr 1e9 ends 'done' with losses of 1e8: far above chance, a blown-up run, not a result."""
    records = pairs(BASE[:6], BASE[:6] - 0.1)
    records += [run(30, "sequential", 1.0), run(30, "parallel", 7e8), run(31, "sequential", 7e8),
                run(31, "parallel", 1.0)]
    res = paired(records)
    g = group(res)
    assert g["n_pairs"] == 6 and g["mean"] == pytest.approx(-0.1) and g["n_excluded"] == 2
    assert g["blown_up"] == {"sequential": 1, "parallel": 1} and g["diverged"] == {"sequential": 0, "parallel": 0}
    assert "blown up: sequential 1, parallel 1" in format_report(compare_report(records))


def test_a_compound_contrast_and_budget_sized_runs_pair():
    """A 13×13 large-kernel branch against a 3×3 conv at one parameter budget: branch and kernel change together,
    and hidden (chosen by the budget) differs too; the pair is still the same experiment."""
    records = []
    for seed in range(4):
        conv = run(seed, "parallel", 1.0 + seed, kernel=3, branch="conv", hidden=16, param_budget=40_000)
        large = run(seed, "parallel", 0.8 + seed, kernel=13, branch="lk", hidden=143, param_budget=40_000)
        records += [conv, large]
    with pytest.raises(SpecError, match=r"contrast: got 'branch\+width'.*joined by '\+'"):
        compare_report(records, contrast="branch+width")
    report = compare_report(records, contrast="branch+kernel", metrics=["val_loss"])
    assert report["values"] == [["conv", 3], ["lk", 13]]
    (res,) = report["paired"]["val_loss"]
    assert res["difference"] == "branch=lk,kernel=13 - branch=conv,kernel=3"
    g = group(res)
    assert g["n_pairs"] == 4 and g["mean"] == pytest.approx(-0.2) and g["verdict"] == "branch=lk,kernel=13 better"
    # without a budget, a differing hidden is a different experiment: no pairs
    records = [with_config(r, param_budget=None) for r in records]
    assert compare_report(records, contrast="branch+kernel")["paired"]["val_loss"][0]["pairs"]["n_pairs"] == 0


# -- runs that did not learn --------------------------------------------------------------------------------------


def test_pairs_with_a_run_near_chance_are_left_out_and_counted():
    records = pairs(BASE[:10], BASE[:10] - 0.1)
    records += [run(30, "sequential", 4.6), run(30, "parallel", 1.0)]  # train loss 2.3 = ln 10: a uniform guess
    g = group(paired(records))
    assert g["n_pairs"] == 10 and g["mean"] == pytest.approx(-0.1) and g["n_excluded"] == 1
    assert g["not_learned"] == {"sequential": 1, "parallel": 0}
    assert not_learned(records[-2]) and not not_learned(records[-1])


def test_runs_that_learned_nothing_get_no_verdict():
    """With one epoch every run sat at chance (val_loss about 2.29) and compare called the wirings equivalent."""
    near_chance = 2 * math.log(10) * (1 - np.abs(NOISE[:10]))  # training losses within 2% of ln 10
    records = pairs(near_chance, near_chance + 0.001)
    res = paired(records)
    for g in res["groups"]:
        assert not g["equivalent"] and g["favours"] is None and g["n_pairs"] == 0
        assert g["verdict"] == "not learned: 10 of 10 pairs hold a run near chance level; train longer"
    report = compare_report(records)
    verdicts = [g["verdict"] for comparisons in report["paired"].values() for c in comparisons for g in c["groups"]]
    assert verdicts and all(v.startswith("not learned") for v in verdicts)
    text = format_report(report)
    rows = [line for line in text.splitlines() if line.startswith("mnist ")]
    assert rows and not any("equivalent" in line or "better" in line for line in rows)
    assert "not learned: sequential 10, parallel 10" in text
