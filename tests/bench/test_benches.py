"""The benchmarks run end to end at toy sizes and print their ratios (speed itself is never asserted here)."""

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ratios(text: str, label: str) -> list[float]:
    """Every "<number>x" on the lines that start with `label`."""
    lines = [line for line in text.splitlines() if line.startswith(label)]
    return [float(x) for line in lines for x in re.findall(r"(\d+\.\d+)x", line)]


def test_parallel_latency_prints_a_ratio_per_depth_and_batch(capsys):
    bench("parallel_latency").main(["--device", "cpu", "--blocks", "2,4", "--batches", "1,8", "--width", "8",
                                    "--size", "8", "--repeats", "2"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] in (["2"], ["4"])]
    assert [(r[0], r[1]) for r in rows] == [("2", "1"), ("2", "8"), ("4", "1"), ("4", "8")]
    assert all(float(r[-1]) > 0 for r in rows)  # seq/par


def test_sweep_throughput_prints_both_ratios(capsys):
    bench("sweep_throughput").main(["--set", "mnist", "--device", "cpu", "--seeds", "1", "--subset", "256",
                                    "--samples", "256", "--test", "32"])
    out = capsys.readouterr().out
    assert "8 configs (1 per shape) in 8 packs" in out
    training = ratios(out, "ratio packed/baseline")
    assert len(training) == 2 and all(r > 0 for r in training)
    rows = {label: line.split()[-3:] for line in out.splitlines()
            for label in ("baseline", "packed: training", "packed: with evaluation") if line.strip().startswith(label)}
    # seconds and model-samples/s; TFLOP/s may print as 0.000 on a slow or busy machine
    assert len(rows) == 3 and all(float(v) > 0 for row in rows.values() for v in row[:2])


def test_large_set_uses_cifar_shaped_images_when_cifar10_is_absent(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPTHLAB_DATA", str(tmp_path))  # an empty data home: no CIFAR-10 here
    module = bench("sweep_throughput")
    data = module.load_data("cifar10", 64, "cpu", None, n_test=8)
    assert data.name == "synthetic" and tuple(data.train_x.shape) == (64, 3, 32, 32) and len(data.test_x) == 8
    assert data.num_classes == 10


@pytest.mark.parametrize("name", ["mnist", "large"])
def test_sets_match_their_targets(name):
    configs = bench("sweep_throughput").configs_for(name, seeds=1, samples=256, dataset_size=256)
    if name == "mnist":  # the MNIST-size configs: width ≤ 32, blocks ≤ 4
        assert all(c.width <= 32 and c.blocks <= 4 for c in configs)
    else:  # the largest shapes of the paper grid
        from depthlab.spec.grid import load_spec
        paper = load_spec("paper").configs()
        assert {(c.width, c.blocks, c.kernel) for c in configs} == {
            (max(c.width for c in paper), max(c.blocks for c in paper), max(c.kernel for c in paper))}


def test_lk_speed_prints_layout_and_merge_ratios(capsys):
    bench("lk_speed").main(["--quick"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and " cores, torch " in lines[0] and " threads" in lines[0]
    bare = [line.split() for line in lines if line.startswith("bare conv ")]
    assert [r[2] for r in bare] == ["1"] and len(ratios(out, "bare conv ")) == 1  # threads 1 in the quick mode
    train = [line.split() for line in lines if line.startswith("train ")]
    assert [(r[1], r[2], r[3]) for r in train] == [(k, rp, m) for m in ("1", "2")
                                                   for k, rp in (("3", "none"), ("13", "none"), ("13", "dilated"))]
    assert all(float(r[4]) > 0 and float(r[5]) > 0 and r[-1] in ("yes", "NO") for r in train)
    assert all(r[-1] == "yes" for r in train if r[3] != "1")  # M·C_in > 1 channel: channels_last really used
    assert len(ratios(out, "train ")) == 6 and all(r > 0 for r in ratios(out, "train "))
    infer = [line.split() for line in lines if re.match(r"infer +(NCHW|channels_last) ", line)]
    assert [(r[1], r[2]) for r in infer] == [("NCHW", "1"), ("channels_last", "1"), ("NCHW", "2"),
                                             ("channels_last", "2")]
    assert all(float(r[3]) > 0 and float(r[4]) > 0 and float(r[5].rstrip("x")) > 0 for r in infer)
    params = re.search(r"eval ([\d,]+), merged ([\d,]+) .*spec_params says ([\d,]+) and ([\d,]+)", out)
    eval_p, merged_p, spec_eval, spec_merged = (int(g.replace(",", "")) for g in params.groups())
    assert merged_p < eval_p and (eval_p, merged_p) == (spec_eval, spec_merged)
    flops = re.search(r"MFLOP per sample: eval ([\d.]+), merged ([\d.]+)", out)
    assert float(flops.group(2)) < float(flops.group(1))


# one training batch of 32 per run: the bf16 columns are emulated on a CPU without native bf16 (about 10x slower)
TINY_CPU = ["--dataset", "synthetic", "--subset", "64", "--val", "32", "--test", "64", "--batch", "32",
            "--seeds", "1", "--epochs", "1", "--matmul", "64", "--sizes", "1,2", "--steps", "1", "--warmup", "1", "--repeats", "1"]


def test_cpu_throughput_prints_the_ceiling_the_ratios_and_the_tables(capsys, monkeypatch):
    from depthlab import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)  # bf16 columns on any CPU (emulated)
    module = bench("cpu_throughput")
    monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(module, "default_workers", lambda device, runs: 2)  # as on two cores or more
    module.main(TINY_CPU + ["--rounds", "2"])
    out = capsys.readouterr().out
    assert re.search(r"ceiling \(64x64 matmul\): fp32 [\d.]+ GFLOP/s, bf16 [\d.]+ GFLOP/s", out)
    for label in ("baseline: plain fp32 loop, freed memory kept", "engine fp32: training", "engine bf16: training",
                  "engine bf16: end to end", "engine bf16, 2 workers: training", "engine bf16, 2 workers: end to end"):
        (line,) = [row for row in out.splitlines() if row.startswith(label)]
        assert float(re.findall(r"(\d+\.\d+)x", line)[0]) > 0
    assert "baseline: plain fp32 loop, as a script" in out
    # two rounds: the ratios within each round, and their medians
    assert re.search(r"targets \(native bf16\), engine bf16, 2 workers: training: >= 2x the baseline: [\d.]+x "
                     r"\((NOT )?met\); >= 40% of the bf16 ceiling: \d+% \((NOT )?met\) \(by round: [\d.]+x \d+%, "
                     r"[\d.]+x \d+%\)", out)
    steps = [row for row in out.splitlines() if re.match(r"(seq|par) \d blocks +(fp32|bf16) +(NCHW|channels_last)", row)]
    assert len(steps) == 4 * 2 * 2  # shapes x precisions x layouts
    evals = [row for row in out.splitlines()
             if re.match(r"(seq|par) \d blocks +(fp32|bf16) +[\d,]+ +[\d,]+ +[\d,]+$", row)]
    assert len(evals) == 4 * 2


def test_cpu_throughput_says_no_native_bf16_and_skips_it(capsys, monkeypatch):
    from depthlab import precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    module = bench("cpu_throughput")
    monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: False)
    module.main(TINY_CPU)
    out = capsys.readouterr().out
    assert "native bf16: no; auto precision: fp32" in out and "bf16 no native bf16 (skipped)" in out
    assert "engine bf16" not in out and "targets" not in out
    assert not re.search(r"blocks +bf16", out)


def test_store_scale_prints_the_ratio_of_each_read_and_each_commands_growth(capsys):
    bench("store_scale").main(["--runs", "40", "--sweeps", "2", "--sizes", "20,40", "--epochs", "2",
                               "--commands", "status,summary"])
    out = capsys.readouterr().out
    assert "store of 40 runs" in out and len(ratios(out, "records of")) == 2
    assert "built a store of 20 runs" in out and "built a store of 40 runs" in out
    for name in ("status", "summary"):  # seconds at each size, and per 1,000 runs against the smallest store's
        (line,) = [row for row in out.splitlines() if row.startswith(name + " ")]
        assert len(re.findall(r"\d+\.\d+ s \(\d+\.\d+x\)", line)) == 2 and ratios(line, name)[0] == 1.0


def test_study_quick_prints_wall_time_flops_and_where_the_time_went(tmp_path, monkeypatch, capsys):
    import yaml

    monkeypatch.setenv("DEPTHLAB_DATA", str(tmp_path / "data"))
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny", "dataset": "synthetic", "budgets": [6000], "depths": [1, 2],
                                    "levers": ["depth"], "seeds": 3, "max_seeds": 3, "epochs": 1}))
    assert bench("study_quick").main(["--spec", str(spec), "--precision", "fp32", "--matmul", "256"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"wall time \d+\.\d s = \d+\.\d\dx the 600 s target", out)
    assert re.search(r"training FLOPs \d+\.\d\d TFLOP .* = \d+\.\d{3}x the fp32 matmul ceiling", out)
    assert re.search(r"outside training steps: .* = \d\.\d\dx the whole", out)
    designs = re.search(r"pack time per design .*: (.*)", out).group(1)
    assert {part.split()[0] for part in designs.split(", ")} == {"d1", "d2"}
