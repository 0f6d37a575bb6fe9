"""A report of more runs than a page can list or a scatter can show: the run table becomes one row per setting
with a note saying so, the pair scatters become 2-D histograms and the Q figure a sample (each said in its
caption), the learning curves read the history of a few runs only, and the page stays small. The store is
hand-made through the store's API (conftest's `big_store`): a little over MAX_TABLE_RUNS done runs. The point
limit is lowered for the module so that a panel of this store is "too many" (a real one needs 5,000 points)."""

from __future__ import annotations

import dataclasses

import pytest

from depthlab.report import html as report_html
from depthlab.report import plots, write_report
from depthlab.report.html import load_records

SEEDS = 350  # conftest's big_store: × 3 wirings × 2 widths = 2,100 runs
POINTS = 1_000  # the module's point limit: the one panel holds 1,400 pairs and 2,100 runs
PAGE_BYTES = 600_000  # about 320 kB; with every run listed this page is 2.0 MB, and 100,000 runs' 93 MB


@pytest.fixture(scope="module")
def big_report(big_store, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "MAX_POINTS", POINTS)
        out = write_report(big_store, tmp_path_factory.mktemp("big_out") / "report.html", runs=4)
    with open(out, encoding="utf-8") as f:
        return f.read()


def test_a_large_store_gets_a_table_per_setting_with_a_note(big_store, big_report, html_tables):
    n = SEEDS * 6
    assert n > report_html.MAX_TABLE_RUNS
    rows = html_tables(big_report)["runs-table"]
    assert rows[0][:3] == ["topology", "width", "runs"]
    assert len(rows) == 1 + 6  # 3 wirings × 2 widths, seeds averaged
    assert {row[2] for row in rows[1:]} == {str(SEEDS)}
    assert f"{n:,} runs, more than the {report_html.MAX_TABLE_RUNS:,}" in big_report
    assert f"depthlab results --store {big_store}" in big_report


def test_a_large_store_bins_and_samples_its_scatters_and_says_so(big_report):
    captions = {kind: big_report.split(f'id="fig-{kind}"')[1].split("</figcaption>")[0]
                for kind in ("scatter-val", "scatter-train", "loss-vs-q", "curves")}
    assert "2-D histogram" in captions["scatter-val"] and "2-D histogram" in captions["scatter-train"]
    assert f"random sample of {POINTS:,}" in captions["loss-vs-q"]
    assert "data:image/png" in captions["curves"] and "nodata" not in captions["curves"]
    assert len(big_report.encode()) < PAGE_BYTES


def test_the_learning_curves_fetch_few_histories(big_store):
    records = load_records(big_store, history=False)
    assert all(not r.history for r in records) and records[0].epochs_run == 3
    ids = plots.curve_candidates(records, 4)
    assert 0 < len(ids) <= 2 * plots.CANDIDATES * 4
    chosen = plots.curve_runs(report_html.load_histories(big_store, None, ids), 4)
    assert chosen == plots.curve_runs(load_records(big_store), 4)  # the same pairs as from every history


def test_a_binned_scatter_has_no_point_per_pair(big_store):
    records = load_records(big_store, history=False)
    points = plots.scatter_points(records)
    fig = plots.scatter_pairs(records)  # at the real limit: points
    assert plots.note(fig) is None and len(points) < plots.MAX_POINTS
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "MAX_POINTS", POINTS)
        fig = plots.scatter_pairs(records)
    assert "2-D histogram" in plots.note(fig)
    ax = fig.axes[0]
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) < len(points)  # hexagons


def test_curves_from_fetched_histories_say_why_there_are_none(one_epoch_store, tmp_path):
    records = load_records(one_epoch_store, history=False)
    ids = plots.curve_candidates(records, 4)
    assert ids and len(ids) < len(records)  # the longest run, and one of each wiring for its style
    with pytest.raises(plots.NoData, match="at most 1 epoch of val_loss history"):
        plots.learning_curves(report_html.load_histories(one_epoch_store, None, ids), 4)


def test_the_settings_note_exports_the_sweep_the_report_shows(big_store):
    """A report of one sweep points at `depthlab results --sweep` of it, not at the whole store."""
    records = load_records(big_store, sweep="hand", history=False)
    one = report_html._settings_table(records, str(big_store))
    assert f"depthlab results --store {big_store} --sweep hand (" in one["note"]
    two_sweeps = [dataclasses.replace(records[0], sweep="other"), *records[1:]]  # the whole store's command
    assert "--sweep" not in report_html._settings_table(two_sweeps, str(big_store))["note"]


def test_plot_says_what_it_binned(big_store, tmp_path, capsys, monkeypatch):
    from depthlab.cli.main import main

    monkeypatch.setattr(plots, "MAX_POINTS", POINTS)
    assert main(["plot", "scatter-val", "--store", str(big_store), "--out", str(tmp_path / "s.svg")]) == 0
    assert "2-D histogram" in capsys.readouterr().out
