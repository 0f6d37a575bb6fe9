"""Signal growth at initialisation: combinatorial at λ = 1 without normalisation, tamed by 1/n, 1/√n, a zero
learnable scale, or BatchNorm."""

import json

import pytest
import torch

import depthlab.cli.main as cli_main
from depthlab.analysis.signal import example_rms, signal_growth



def test_example_rms():
    t = torch.ones(3, 2, 4, 4)
    t[1] *= 3
    assert example_rms(t).tolist() == [1.0, 3.0, 1.0]


@pytest.fixture(scope="module")
def rows():
    common = dict(width=8, input_size=8, batch=8, seed=0)
    return (signal_growth(depths=(1, 64, 256), scales=("1", "1/sqrt(n)", "1/n", "learnable"), norms=("none",),
                          **common)
            + signal_growth(depths=(1, 256), scales=("1", "learnable"), norms=("batch",), **common))


def pick(rows, norm, scale, n):
    return next(r for r in rows if r["norm"] == norm and r["scale"] == scale and r["blocks"] == n)


def test_growth_explodes_at_lambda_one_without_normalisation(rows):
    # PyTorch's default init gives a branch a small gain g (second moment ×(1+g) per block, g ≈ 0.05 here), so
    # the compounding shows by depth 64 (×3.4-5.4 over seeds 0-5) and is explosive by 256 (×150-460).
    g1, g64, g256 = (pick(rows, "none", "1", n)["stream_rms"] for n in (1, 64, 256))
    assert g64 > 2.5 * g1
    assert g256 > 50 * g1
    assert pick(rows, "none", "1", 256)["logit_rms"] > 20 * pick(rows, "none", "1", 1)["logit_rms"]


def test_scaled_and_normalised_networks_stay_bounded(rows):
    for n in (64, 256):
        base = pick(rows, "none", "1/n", 1)["stream_rms"]
        assert 0.8 < pick(rows, "none", "1/n", n)["stream_rms"] / base < 1.25
        base = pick(rows, "none", "1/sqrt(n)", 1)["stream_rms"]
        assert 0.67 < pick(rows, "none", "1/sqrt(n)", n)["stream_rms"] / base < 1.5
    for norm in ("none", "batch"):  # α = 0: the network is the identity on the stem output, at any depth
        for n in (1, 256):
            assert pick(rows, norm, "learnable", n)["growth"] == pytest.approx(1.0, abs=1e-6)
    # with BatchNorm in the branches each block adds a bounded amount: growth like √n, not exponential
    assert pick(rows, "batch", "1", 256)["stream_rms"] < pick(rows, "none", "1", 256)["stream_rms"] / 5


def test_rows_cover_the_grid(rows):
    assert len(rows) == 3 * 4 + 2 * 2
    assert pick(rows, "none", "1/n", 64)["lambda"] == pytest.approx(1 / 64)
    assert all(r["stem_rms"] == rows[0]["stem_rms"] for r in rows if r["norm"] == "none")


def test_cli_signal(monkeypatch, capsys):
    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["analyse"])
    code = cli_main.main(["signal", "--depths", "1,4", "--scales", "1,1/n", "--width", "4", "--batch", "4",
                          "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "norm none:" in out and "norm batch:" in out and "1/n growth" in out
    code = cli_main.main(["signal", "--depths", "2", "--scales", "learnable", "--norms", "none", "--width", "4",
                          "--batch", "4", "--json", "--quiet"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and len(result["rows"]) == 1 and result["rows"][0]["growth"] == pytest.approx(1.0)
