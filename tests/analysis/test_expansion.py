"""The residual expansion against the true stream: exact sums for affine branches, Taylor rates for smooth ones,
the second-order term against finite differences, and the path-length view."""

import itertools
import math

import numpy as np
import pytest
import torch

import depthlab.cli.main as cli_main
from depthlab.analysis.expansion import (expand_table, expansion_by_order, expansion_terms, path_contributions,
                                         path_counts, path_length_distribution)
from depthlab.errors import DepthlabError
from depthlab.models import ModelSpec, build, pack, parallel_from_sequential



def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def spec_of(**changes):
    values = dict(width=4, blocks=4, kernel=3, norm="none", act="gelu", in_channels=1, input_size=8, num_classes=3)
    values.update(changes)
    return ModelSpec(**values)


def inputs(seed=0, batch=6):
    return torch.randn(batch, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))



@pytest.mark.parametrize("norm,scale", [("none", "1"), ("none", "1/sqrt(n)"), ("batch", "1"), ("none", "learnable")])
def test_orders_sum_to_the_stream_for_affine_branches(norm, scale, randomise_bn):
    model = randomise_bn(build(spec_of(act="identity", norm=norm, blocks=5, residual_scale=scale), seed=1).double())
    if model.layers[0].alpha is not None:  # learnable α starts at 0: make the branches count
        with torch.no_grad():
            for layer in model.layers:
                layer.alpha.fill_(0.7)
    model.train()  # the analysis must switch BN to eval by itself, and switch it back
    x = inputs()
    terms = expansion_by_order(model, x)
    assert len(terms) == 6 and model.training
    with torch.no_grad():
        truth = model.eval().features(x)
    assert rel_err(sum(terms), truth) < 1e-10
    # a truncation leaves a real error: every order matters at λ = 1
    assert rel_err(sum(terms[:-1]), truth) > 1e-8
    # orders 0-2 are x, T1, T2
    t = expansion_terms(model, x)
    for k, key in enumerate(("stream", "first", "second")):
        assert rel_err(terms[k], t[key]) < 1e-12


def test_order_k_term_is_the_sum_over_paths_of_length_k():
    """Brute force for n = 3 affine blocks: order k = Σ over increasing index sets of size k of the composed
    maps, with each block's constant entering where its path starts."""
    model = build(spec_of(act="identity", blocks=3), seed=2).double().eval()
    x = inputs(1)
    with torch.no_grad():
        s = model.stem(x)
        residuals = [layer.residual for layer in model.layers]
        linear = [lambda v, r=r: r(v) - r(torch.zeros_like(v)) for r in residuals]
        expected = [s, torch.zeros_like(s), torch.zeros_like(s), torch.zeros_like(s)]
        for k in (1, 2, 3):
            for path in itertools.combinations(range(3), k):
                # the first block of the path applies its full affine map to s, later ones their linear part
                v = residuals[path[0]](s)
                for j in path[1:]:
                    v = linear[j](v)
                expected[k] = expected[k] + v
    terms = expansion_by_order(model, x)
    for k in range(4):
        assert rel_err(terms[k], expected[k]) < 1e-12


def test_second_order_term_matches_central_differences():
    model = build(spec_of(blocks=4, residual_scale=0.5), seed=3).double().eval()
    x = inputs(2)
    t = expansion_terms(model, x)
    eps = 1e-4
    with torch.no_grad():
        s = model.stem(x)
        running, expected = torch.zeros_like(s), torch.zeros_like(s)
        for layer in model.layers:
            expected += (layer.residual(s + eps * running) - layer.residual(s - eps * running)) / (2 * eps)
            running += layer.residual(s)
    assert rel_err(t["second"], expected) < 1e-6
    assert rel_err(t["first"], running) < 1e-12
    # n = 2: x_2 - x - T1 = R2(x + R1(x)) - R2(x) = T2 + O(s³)
    small = build(spec_of(blocks=2, residual_scale=0.05), seed=4).double().eval()
    t = expansion_terms(small, x)
    remainder = t["output"] - t["stream"] - t["first"]
    assert rel_err(t["second"], remainder) < 0.05
    assert t["err_first"] > 10 * t["err_second"]


@pytest.mark.parametrize("seed", [0, 1])
def test_truncation_errors_shrink_like_the_taylor_orders(seed):
    """Scaling every branch by t: the first-order truncation error is O(t²), the second-order one O(t³)."""
    ts = [0.2, 0.1, 0.05, 0.025]
    x = inputs(seed, batch=8)
    err1, err2 = [], []
    for t in ts:
        model = build(spec_of(blocks=4, residual_scale=t), seed=seed).double()
        r = expansion_terms(model, x)
        err1.append(r["err_first"])
        err2.append(r["err_second"])
    slope1 = np.polyfit(np.log(ts), np.log(err1), 1)[0]
    slope2 = np.polyfit(np.log(ts), np.log(err2), 1)[0]
    assert abs(slope1 - 2) < 0.3, (slope1, err1)
    assert abs(slope2 - 3) < 0.3, (slope2, err2)


def test_one_block_and_the_parallel_network_are_first_order_exact():
    x = inputs(3)
    one = expansion_terms(build(spec_of(blocks=1, act="relu"), seed=5).double(), x)
    assert one["err_first"] < 1e-12 and one["norm_second"] == 0
    seq = build(spec_of(blocks=4, act="relu"), seed=6).double()
    par = expansion_terms(parallel_from_sequential(seq), x)
    assert par["err_first"] < 1e-12 and par["logit_err_first"] < 1e-12 and par["norm_second"] == 0
    deep = expansion_terms(seq, x)
    assert rel_err(deep["first"], par["first"]) < 1e-12  # T1 is the parallel network's residual
    assert deep["err_first"] > 1e-3


def test_expand_table_rows_and_scales():
    x = inputs(4)
    rows = expand_table(spec_of(act="relu"), x, scales=("1", "1/n"), depths=(2, 8), seed=0)
    assert [(r["scale"], r["blocks"]) for r in rows] == [("1", 2), ("1", 8), ("1/n", 2), ("1/n", 8)]
    assert [r["lambda"] for r in rows] == [1.0, 1.0, 0.5, 0.125]
    by = {(r["scale"], r["blocks"]): r for r in rows}
    # same seed, same stem: the zeroth-order term is the same stem output in every row
    assert len({round(r["norm_stream"], 12) for r in rows}) == 1
    # at depth 8, λ = 1/n leaves a far smaller first-order error than λ = 1
    assert by[("1/n", 8)]["err_first"] < by[("1", 8)]["err_first"] / 5


def test_packs_are_refused():
    packed = pack([build(spec_of(), seed=s) for s in range(2)])
    with pytest.raises(DepthlabError):
        expansion_terms(packed, torch.randn(2, 1, 8, 8))


def test_path_length_distribution_is_binomial():
    for n in (1, 5, 12):
        p = path_length_distribution(n)
        assert len(p) == n + 1 and math.isclose(sum(p), 1.0)
        assert sum(path_counts(n)) == 2 ** n
        assert math.isclose(sum(k * pk for k, pk in enumerate(p)), n / 2)  # mean of Binomial(n, ½)
    assert path_counts(4) == [1, 4, 6, 4, 1]


def test_path_contributions_exact_and_approximate():
    x = inputs(5)
    exact = path_contributions(build(spec_of(act="identity", blocks=4), seed=7).double(), x)
    assert exact["exact"] and exact["residual"] < 1e-10 and "exact" in exact["note"]
    assert [r["paths"] for r in exact["orders"]] == [1, 4, 6, 4, 1]
    assert exact["orders"][-1]["err_through_order"] < 1e-10
    approx = path_contributions(build(spec_of(act="gelu", blocks=4, residual_scale="1/n"), seed=7).double(), x,
                                max_order=2)
    assert not approx["exact"] and "approximate" in approx["note"] and len(approx["orders"]) == 3
    assert approx["residual"] > 0


def _cli(monkeypatch, capsys, argv):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["analyse"])
    code = cli_main.main(argv)
    return code, capsys.readouterr()


def test_cli_expand_and_paths(monkeypatch, capsys):
    import json

    code, out = _cli(monkeypatch, capsys, ["expand", "--dataset", "random", "--depths", "1,3", "--width", "4",
                                           "--batch", "4", "--scales", "1,1/n", "--quiet"])
    assert code == 0 and "err_1" in out.out and "1/n" in out.out
    code, out = _cli(monkeypatch, capsys, ["expand", "--dataset", "random", "--blocks", "2", "--width", "4",
                                           "--batch", "4", "--json", "--quiet"])
    rows = json.loads(out.out)["rows"]
    assert code == 0 and len(rows) == 3 and all(r["blocks"] == 2 for r in rows)
    code, out = _cli(monkeypatch, capsys, ["paths", "--dataset", "random", "--blocks", "3", "--width", "4",
                                           "--batch", "4", "--json", "--quiet"])
    result = json.loads(out.out)
    assert code == 0 and result["exact"] and [r["paths"] for r in result["orders"]] == [1, 3, 3, 1]


def test_cli_expand_on_synthetic_data(monkeypatch, capsys):
    pytest.importorskip("depthlab.data")
    code, out = _cli(monkeypatch, capsys, ["expand", "--dataset", "synthetic", "--blocks", "2", "--width", "4",
                                           "--batch", "4", "--scales", "1", "--quiet"])
    assert code == 0 and "synthetic" in out.out
    code, out = _cli(monkeypatch, capsys, ["expand", "--dataset", "no-such-set", "--quiet"])
    assert code == 2 and "no-such-set" in out.err and "--dataset random" in out.err
