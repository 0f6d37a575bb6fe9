"""Pruning at initialisation: the scores against their definitions, masks that keep exactly the density and stay
zero through training, PreCropping's closed form and crop, and pruned runs in the pipeline."""

import math
import re

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from depthlab import prune
from depthlab.data import load
from depthlab.errors import SpecError
from depthlab.models import ModelSpec, build, pack
from depthlab.spec.config import RunConfig
from depthlab.train.engine import train_pack


@pytest.fixture(scope="module")
def data():
    return load("synthetic", val_split=64, n_train=320, n_test=64, shape=(1, 12, 12))


def test_synflow_conserves_the_flow_through_a_linear_chain():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 4, bias=False)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(0.1, 1.0)
    params = dict(net.named_parameters())
    s = prune.synflow_scores(net, params, torch.ones(1, 6, dtype=torch.float64))
    w1, w2 = net[0].weight, net[1].weight
    r = (torch.ones(1, 4, dtype=torch.float64) @ w2.abs() @ w1.abs() @ torch.ones(6, 1, dtype=torch.float64)).item()
    assert s["0.weight"].sum().item() == pytest.approx(r, rel=1e-12)
    assert s["1.weight"].sum().item() == pytest.approx(r, rel=1e-12)  # the same in every layer


def test_synflow_restores_the_network():
    net = build(ModelSpec(width=4, blocks=2, input_size=8), seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prune.scores(net, "synflow")
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_scores_leave_the_network_as_it_was(method):
    """#23 bug 13: SNIP's train-mode forward updated every BatchNorm's running statistics, so the SynFlow densities
    `depthlab prune` printed depended on whether SNIP had scored the same network first."""
    net = build(ModelSpec(width=4, blocks=2, input_size=8, num_classes=3), seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = (torch.randn(1, 6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]))
    alone = prune.scores(net, "synflow")
    prune.scores(net, method, data)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    after = prune.scores(net, "synflow")
    assert all(torch.equal(after[k], alone[k]) for k in alone)


def test_snip_is_the_derivative_with_respect_to_the_mask():
    spec = ModelSpec(width=3, blocks=2, input_size=6, num_classes=3)
    net = build(spec, seed=1).double()
    x = torch.randn(1, 8, 1, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    score = prune.scores(net, "snip", (x, y))
    name = "layers.0.conv1.weight"
    param = dict(net.named_parameters())[name]
    net.train()
    for index in [(0, 0, 1, 1), (2, 1, 0, 2)]:
        def loss(m):
            with torch.no_grad():
                saved = param[index].item()
                param[index] = saved * m
                value = prune._loss(net, x, y).item()
                param[index] = saved
            return value
        eps = 1e-6
        derivative = (loss(1 + eps) - loss(1 - eps)) / (2 * eps)
        assert score[name][index].item() == pytest.approx(abs(derivative), rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("method", ["random", "magnitude", "snip", "grasp", "synflow"])
def test_a_global_mask_keeps_the_density_per_model(method):
    spec = ModelSpec(width=4, blocks=3, topology="parallel", input_size=8)
    net = pack([build(spec, seed=s) for s in range(2)])
    x, y = torch.randn(2, 20, 1, 8, 8), torch.arange(20) % 10
    masks = prune.compute_masks(net, method, 0.3, data=(x, y), iterations=5)
    views = prune.layer_views(net, {**{n: torch.zeros_like(p) for n, p in net.named_parameters()}, **masks})
    for m in range(2):
        kept = sum(v[m].sum().item() for v in views.values())
        total = sum(v[m].numel() for v in views.values())
        assert abs(kept - 0.3 * total) <= 1  # up to one weight
    assert set(masks) == {n for n, _ in net.named_parameters() if n.endswith("weight") and "norm" not in n}


@pytest.mark.parametrize("packed", [False, True])
def test_masked_weights_stay_exactly_zero_through_training(packed, data):
    fields = dict(dataset="synthetic", val_split=64, width=4, blocks=2, batch_size=32, epochs=5,
                  weight_decay=0.05, prune="snip", density=0.4)
    configs = [RunConfig(seed=s, **fields) for s in ((0, 1) if packed else (0,))]
    results = train_pack(configs, data, keep_weights=True)  # 10 steps an epoch: 50 AdamW steps
    for result in results:
        weights = [v for k, v in result.state_dict.items() if k.endswith("weight") and "norm" not in k]
        total = sum(w.numel() for w in weights)
        zeros = sum(int((w == 0).sum()) for w in weights)
        assert zeros == total - round(0.4 * total)
        assert result.final["realised_density"] == pytest.approx(0.4, abs=1 / total)
        assert len(result.history) == 5 and result.status == "done"


def test_precrop_closed_form_meets_the_budget_kkt_and_slsqp():
    rng = np.random.default_rng(0)
    for trial in range(5):
        costs = {f"l{i}": float(c) for i, c in enumerate(rng.uniform(10, 1000, 5))}
        density = float(rng.uniform(0.1, 0.8))
        p = prune.precrop_densities(costs, density)
        c = np.array(list(costs.values()))
        x = np.array(list(p.values()))
        assert (x * c).sum() == pytest.approx(density * c.sum(), rel=1e-9)  # the budget, with equality
        free = x < 1 - 1e-9
        assert np.allclose(x[free] * c[free], (x[free] * c[free])[0], rtol=1e-6)  # KKT: p·c equal if uncapped
        res = minimize(lambda v: -np.log(v).sum(), np.full(5, density), method="SLSQP", bounds=[(1e-9, 1)] * 5,
                       constraints=[{"type": "eq", "fun": lambda v: v @ c - density * c.sum()}],
                       options={"ftol": 1e-12, "maxiter": 500})
        assert np.allclose(x, res.x, atol=1e-4)


def test_erk_densities_follow_rigl():
    sizes = {"a": (64, 3, 3, 3), "b": (64, 64, 3, 3), "c": (10, 1024)}
    d = prune.erk_densities(sizes, 0.2)
    numel = {n: math.prod(s) for n, s in sizes.items()}
    assert sum(d[n] * numel[n] for n in sizes) == pytest.approx(0.2 * sum(numel.values()))
    raw = {n: sum(s) / math.prod(s) for n, s in sizes.items()}
    assert d["a"] / d["b"] == pytest.approx(raw["a"] / raw["b"]) and d["c"] / d["b"] == pytest.approx(raw["c"] / raw["b"])
    d = prune.erk_densities(sizes, 0.3)  # now the layer with the largest ratio would exceed 1: made dense
    assert d["c"] == 1.0 and max(d.values()) <= 1
    assert sum(d[n] * numel[n] for n in sizes) == pytest.approx(0.3 * sum(numel.values()))
    assert d["a"] / d["b"] == pytest.approx(raw["a"] / raw["b"])


@pytest.mark.parametrize("method", ["random", "synflow", "precrop_params"])
def test_crop_realises_the_mask_with_its_parameters(method):
    spec = RunConfig(width=32, blocks=4, head="flatten", stem_stride=2).model_spec()
    net = build(spec, seed=0)
    masks = prune.compute_masks(net, method, 0.3, iterations=10)
    kept = sum(m.sum().item() for m in masks.values())
    cropped = build(prune.crop_spec(net, masks), seed=0)
    assert sum(prune.layer_sizes(cropped).values()) == pytest.approx(kept, rel=0.01)
    assert cropped.spec.width == round(prune.layer_densities(net, masks)[0]["head"] * 32)


def test_crop_trains_and_density_one_is_the_dense_network(data):
    fields = dict(dataset="synthetic", val_split=64, width=8, blocks=2, batch_size=32, epochs=1, head="flatten")
    (dense,) = train_pack([RunConfig(**fields)], data)
    (same,) = train_pack([RunConfig(prune="snip", density=1, prune_structure="crop", **fields)], data)
    assert same.final["train_loss"] == dense.final["train_loss"] and "widths" not in same.final
    (crop,) = train_pack([RunConfig(prune="snip", density=0.3, prune_structure="crop", **fields)], data)
    assert crop.status == "done" and crop.params < dense.params and crop.final["widths"][0] <= 8
    assert crop.final["realised_density"] == pytest.approx(0.3, abs=0.03)


def test_pruned_runs_pack_and_crop_runs_train_alone():
    mask = [RunConfig(prune="synflow", density=0.3, seed=s) for s in range(3)]
    assert len({c.pack_key() for c in mask}) == 1
    crop = [RunConfig(prune="synflow", density=0.3, prune_structure="crop", seed=s) for s in range(3)]
    assert len({c.pack_key() for c in crop}) == 3


@pytest.mark.parametrize("value", [0, 1.5, "a lot", True, -0.1])
def test_a_bad_density_is_a_clear_error(value):
    with pytest.raises(SpecError, match=r"density: got .*; allowed: a kept fraction in \(0, 1\]"):
        RunConfig(prune="snip", density=value)
    with pytest.raises(SpecError, match="prune: got 'lottery'; allowed: none, random"):
        RunConfig(prune="lottery")


def test_cli_prune_prints_densities_and_the_cropped_widths(tmp_path, capsys):
    import json

    from depthlab.cli.main import main

    out = tmp_path / "profile.png"
    assert main(["prune", "--methods", "synflow,precrop_params", "--blocks", "3", "--width", "8", "--iterations",
                 "5", "--density", "0.2", "--json", "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    rows = json.loads(text[:text.rindex("}") + 1])["rows"]
    assert {(r["method"], r["topology"]) for r in rows} == {(m, t) for m in ("synflow", "precrop_params")
                                                            for t in ("sequential", "parallel")}
    assert all(len(r["blocks"]) == 3 and len(r["crop_hidden"]) == 3 for r in rows)
    assert out.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit):
        main(["prune", "--methods", "lottery"])


def test_the_report_draws_the_pruning_profile_of_a_pruned_sweep():
    from depthlab.records import RunRecord
    from depthlab.report import build_report, plots

    records = []
    for i, (method, topology) in enumerate([(m, t) for m in ("snip", "synflow") for t in ("sequential",
                                                                                          "parallel")]):
        config = dict(dataset="synthetic", topology=topology, prune=method, density=0.3, blocks=2, seed=0)
        records.append(RunRecord.make(
            config, run_id=f"r{i}", status="done", val_loss=1.0, train_loss=1.0,
            layer_density={"stem": 1.0, "block0.conv1.weight": 0.4, "block0.conv2.weight": 0.2,
                           "block1.conv1.weight": 0.3, "block1.conv2.weight": 0.3, "head": 0.1}))
    rows = plots.prune_rows(records)
    assert len(rows) == 4 and rows[0]["blocks"] == pytest.approx([0.3, 0.3])
    assert 'id="fig-prune"' in build_report(records, title="pruned")


@pytest.mark.parametrize("branch,kernel,topology", [("conv", 3, "sequential"), ("conv", 3, "parallel"),
                                                    ("lk", 7, "sequential"), ("lk", 7, "parallel")])
def test_crop_keep_copies_the_kept_channels(branch, kernel, topology):
    spec = ModelSpec(width=6, blocks=2, kernel=kernel, branch=branch, topology=topology, input_size=8,
                     head="flatten")
    dense = build(spec, seed=0).double().eval()
    masks = prune.compute_masks(dense, "magnitude", 0.5)
    same = build(spec, seed=1).double().eval()  # cropping nothing away keeps the whole network
    prune.keep_cropped(dense, masks, same)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(same(x), dense(x))
    small = build(spec.replace(width=4, hidden=3), seed=1).double()
    prune.keep_cropped(dense, masks, small)
    dense_stem, small_stem = dense.stem.weight, small.stem.weight
    assert all(any(torch.equal(row, d) for d in dense_stem) for row in small_stem)  # rows of the dense stem
    with pytest.raises(ValueError, match="wider than the dense one"):
        prune.keep_cropped(dense, masks, build(spec.replace(hidden=9), seed=0).double())


def test_a_crop_keep_run_trains(data):
    fields = dict(dataset="synthetic", val_split=64, width=8, blocks=2, batch_size=32, epochs=1, head="gap",
                  prune="magnitude", density=0.5, prune_structure="crop", crop_init="keep")
    (result,) = train_pack([RunConfig(**fields)], data)
    assert result.status == "done" and result.final["widths"][0] <= 8


@pytest.mark.auto_precision
def test_pruned_runs_resume_like_any_run(tmp_path):
    from depthlab.run.runner import run_sweep
    from depthlab.spec.grid import SweepSpec
    from depthlab.results.store import Store

    spec = SweepSpec.from_dict({
        "name": "p", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 64, "test_subset": 16,
                                  "width": 4, "blocks": 2, "stem_stride": 2, "batch_size": 32, "epochs": 1,
                                  "prune": "synflow", "density": 0.5},
        "grid": {"prune_structure": ["mask", "crop"], "seed": [0, 1]}})
    store = tmp_path / "s.sqlite"
    first = run_sweep(spec, store, device="cpu", progress=False, limit=3)
    assert sum(first["trained"].values()) == 3
    second = run_sweep(spec, store, device="cpu", progress=False)
    assert sum(second["trained"].values()) == 1 and second["counts"]["done"] == 4
    records = Store(store).records()
    assert all(r.extra["realised_density"] and r.extra["pruned_params"] and r.extra["layer_density"] for r in records)


def test_a_crop_pruned_runs_saved_weights_load_for_every_analysis(tmp_path, capsys):
    """#23 bug 5: the weights of a crop-pruned run could not be loaded by lesion, convert, expand, paths, erf,
    reparam or shift (size mismatch: the file has the cropped widths, the config the dense ones)."""
    from depthlab.cli.main import main
    from depthlab.models import param_count
    from depthlab.results.store import Store
    from depthlab.results.weights import load_trained
    from depthlab.run.runner import run_sweep
    from depthlab.spec.grid import SweepSpec

    spec = SweepSpec.from_dict({
        "name": "c", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 64, "test_subset": 16,
                                  "width": 8, "blocks": 2, "stem_stride": 2, "batch_size": 32, "epochs": 1,
                                  "prune": "precrop_params", "density": 0.5, "prune_structure": "crop"}})
    store = tmp_path / "s.sqlite"
    run_sweep(spec, store, device="cpu", progress=False, save_weights=True, precision="fp32")
    (rec,) = Store(store).records()
    model, config, _ = load_trained(store, rec.run_id)
    assert config.cropped and param_count(model) == rec.params
    assert main(["lesion", "--store", str(store), "--run", rec.run_id, "--no-plain", "--quiet"]) == 0


def test_a_density_below_one_weight_per_layer_is_refused_naming_the_smallest_allowed():
    """#23: `density: 1e-9` kept no weight at all, so the run trained a constant network and recorded it as a
    result; a crop of it ended 8 orders of magnitude above the density asked for, without a word."""
    fields = dict(dataset="synthetic", width=4, blocks=2, stem_stride=2, prune="magnitude")
    net = build(RunConfig(**fields).model_spec(), seed=0)
    sizes = prune.layer_sizes(net)
    layers, weights = len(sizes), sum(sizes.values())
    nothing = prune.compute_masks(net, "magnitude", 1e-9)
    prune.apply_masks(net, nothing)
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(net.eval()(x[:1]), net(x[1:]))  # what density 1e-9 trained: the same output for any input
    with pytest.raises(SpecError, match=r"density: got 1e-09; allowed: at least \S+ for this run, up to 1 \(a "
                       rf"mask keeps {layers} of its {weights:,} prunable weights, one per layer") as refused:
        RunConfig(density=1e-9, **fields)
    floor = float(re.search(r"at least (\S+) for", str(refused.value)).group(1))
    assert layers / weights <= floor < 1.01 * layers / weights
    assert RunConfig(density=floor, **fields).density == floor  # the density the message names is allowed
    assert sum(m.sum().item() for m in prune.compute_masks(net, "magnitude", floor).values()) >= layers
    with pytest.raises(SpecError, match="density"):
        RunConfig(density=(layers - 1) / weights, **fields)  # fewer weights than layers: one is left empty
    # a crop keeps a channel of each layer: it is never smaller than the network of width 1 and hidden width 1
    narrowest = sum(prune.layer_sizes(build(net.spec.replace(width=1, hidden=1))).values())
    with pytest.raises(SpecError, match=rf"its narrowest crop, width 1 and hidden width 1, keeps {narrowest} of "
                       rf"its {weights}") as refused:
        RunConfig(density=floor, prune_structure="crop", **fields)
    crop_floor = float(re.search(r"at least (\S+) for", str(refused.value)).group(1))
    assert narrowest / weights <= crop_floor < 1.01 * narrowest / weights
    RunConfig(density=crop_floor, prune_structure="crop", **fields)
    RunConfig(**{**fields, "prune": "none", "density": 1e-9})  # no pruning: the density changes nothing


def test_run_says_when_a_crop_kept_far_more_than_its_density(tmp_path, capsys):
    """A crop keeps whole channels: in a narrow network it can keep several times the density asked for. `run`
    says so in one line, and each run records the density it realised."""
    import yaml

    from depthlab.cli.main import main
    from depthlab.results.store import Store

    spec, store = tmp_path / "crop.yaml", tmp_path / "s.sqlite"
    spec.write_text(yaml.safe_dump({
        "name": "crop", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 32, "test_subset": 16,
                                     "width": 4, "blocks": 2, "stem_stride": 2, "batch_size": 32, "epochs": 1,
                                     "prune": "magnitude", "prune_structure": "crop"},
        "grid": {"density": [0.1, 0.6]}}))
    assert main(["run", str(spec), "--store", str(store), "--quiet", "--no-compare", "--no-complexity",
                 "--precision", "fp32"]) == 0
    kept = {r.config["density"]: r.extra["realised_density"] for r in Store(store).records()}
    wide = [d for d, got in kept.items() if got > 2 * d]
    assert wide == [0.1]  # width 4: its narrowest crop alone keeps 8% of the weights
    line = [ln for ln in capsys.readouterr().out.splitlines() if "crop run" in ln]
    assert line == [f"1 crop run(s) of sweep crop kept more than 2x their density (density 0.1 kept "
                    f"{kept[0.1]:.3g}): a crop keeps whole channels, at least one per layer; each run records its "
                    "realised_density (`depthlab results`)"]


def test_a_crop_that_starts_from_trained_weights_is_refused_with_what_works():
    """A crop chooses its network from a fresh dense one: `init_from` with prune_structure crop failed at training
    time with a shape error (the trained start is narrow already); it is refused when the config is read."""
    fields = dict(dataset="synthetic", width=8, blocks=2, prune="random", density=0.5, prune_structure="crop")
    with pytest.raises(SpecError, match=r"init_from: got '0123456789abcdef'; allowed: null with prune_structure "
                                        r"crop .* give its width and hidden widths with prune none"):
        RunConfig(init_from="0123456789abcdef", **fields)
    RunConfig(init_from="0123456789abcdef", **{**fields, "prune_structure": "mask"})
    RunConfig(init_from="0123456789abcdef", **{**fields, "prune": "none"})
