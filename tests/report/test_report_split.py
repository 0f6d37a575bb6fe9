"""`depthlab report --by FIELD` and `depthlab plot KIND --by FIELD --metric METRIC`: a panel per value of the field
in the comparison figures, a section of verdicts per value and its column in the tables of the report; a field
or metric that does not exist is refused with the allowed ones, as `depthlab compare --by` refuses it."""

from __future__ import annotations

import re

import pytest

from depthlab.analysis.compare import ALL, _fmt, band_table, compare_report
from depthlab.errors import DepthlabError, SpecError
from depthlab.records import METRICS
from depthlab.report import build_report, plots, write_report

BLOCKS = (2, 3)  # the values of blocks in the tiny sweep, 3 pairs each
ALLOWED = "blocks, norm, seed"  # the config fields that vary across its runs, less the wiring the figures pair


def test_the_comparison_figures_have_a_panel_per_value_of_by(records):
    for kind in plots.DEFAULT_METRIC:
        titles = [ax.get_title() for ax in plots.figure(kind, records, 4, by="blocks").axes]
        for value in BLOCKS:
            assert len([t for t in titles if t.startswith(f"blocks = {value}")]) == 1, (kind, titles)
    titles = [ax.get_title() for ax in plots.figure("scatter-val", records, by="blocks").axes]
    assert [t for t in titles if t] == [f"blocks = {v} · 3 pairs" for v in BLOCKS]
    assert not any("blocks =" in ax.get_title() for ax in plots.figure("scatter-val", records).axes)


def test_metric_chooses_what_a_comparison_figure_draws(records):
    fig = plots.figure("scatter-val", records, metric="val_acc")
    ax = next(ax for ax in fig.axes if ax.collections)
    assert ax.get_xlabel() == "sequential: final validation accuracy"
    xs = sorted(float(x) for c in ax.collections for x, _ in c.get_offsets())
    assert xs == pytest.approx(sorted(pt["x"] for pt in plots.scatter_points(records, "val_acc")))


def section(html: str, ident: str) -> str:
    return re.search(rf'id="{ident}">(.*?)(?=<div class="by-value"|</section>)', html, re.S).group(1)


def test_report_by_has_a_section_per_value(by_report_path, records):
    html = by_report_path.read_text(encoding="utf-8")
    assert 'href="#by"' in html
    assert re.findall(r'<div class="by-value" id="(by-\d+)"><h3>([^<]*)</h3>', html) == [
        ("by-0", "blocks = 2"), ("by-1", "blocks = 3")]
    compare = compare_report(records, by="blocks")
    for i, value in enumerate(BLOCKS):
        part = section(html, f"by-{i}")
        for metric, (res,) in compare["paired"].items():
            g = next(g for g in res["groups"] if g["q_band"] == ALL and g["by_value"] == value)
            assert g["n_pairs"] == 3
            assert f">{g['verdict']}</span>" in part and f"mean d {_fmt(g['mean'])}" in part, metric
            assert f"parallel better in {g['wins_b']} of 3 pairs" in part


def test_report_by_tables_have_its_column(by_report_path, records, html_tables):
    tables = html_tables(by_report_path.read_text(encoding="utf-8"))
    compare = compare_report(records, by="blocks")
    for metric, (res,) in compare["paired"].items():
        header, *rows = tables[f"paired-{metric}"]
        assert header[:3] == ["dataset", "Q band", "blocks"]
        assert [row[:3] for row in rows] == [[g["dataset"], g["q_band"], _fmt(g["by_value"])] for g in res["groups"]]
    header, *rows = tables["band-table"]
    assert header[:5] == ["dataset", "blocks", "topology", "Q band", "n"]
    expected = [[r["dataset"], str(value), r["value"], r["q_band"], _fmt(r["n"])]
                for value in BLOCKS for r in band_table([x for x in records if x.config["blocks"] == value])]
    assert [row[:5] for row in rows] == expected


def test_bad_by_and_metric_are_refused_with_the_allowed_values(sweep_store, records, tmp_path, cli, capsys):
    out, png = tmp_path / "r.html", tmp_path / "f.png"
    assert cli("report", "--store", str(sweep_store), "--out", str(out), "--by", "depth") == 2
    assert capsys.readouterr().err.splitlines() == [f"depthlab: error: by: got 'depth'; allowed: {ALLOWED}"]
    # the figures pair the wirings: the wiring is no field to split them by
    assert cli("plot", "winrate", "--store", str(sweep_store), "--out", str(png), "--by", "topology") == 2
    assert capsys.readouterr().err.splitlines() == [f"depthlab: error: by: got 'topology'; allowed: {ALLOWED}"]
    with pytest.raises(SystemExit) as stop:
        cli("plot", "curves", "--store", str(sweep_store), "--out", str(png), "--metric", "val_los")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--metric: invalid choice: 'val_los'" in err and all(m in err for m in METRICS)
    assert cli("plot", "erf", "--store", str(sweep_store), "--out", str(png), "--metric", "val_acc") == 2
    kinds = "scatter-val, scatter-train, loss-vs-q, curves, winrate"
    assert f"--metric and --by apply to {kinds}" in capsys.readouterr().err
    assert not out.exists() and not png.exists()
    # the Python API refuses them alike
    with pytest.raises(SpecError) as err:
        plots.figure("scatter-val", records, metric="accuracy")
    assert err.value.allowed == ", ".join(METRICS)
    for call in (lambda: write_report(sweep_store, out, by="depth"), lambda: build_report(records, by="depth"),
                 lambda: plots.figure("loss-vs-q", records, by="depth")):
        with pytest.raises(SpecError) as err:
            call()
        assert err.value.allowed == ALLOWED
    with pytest.raises(DepthlabError, match="use png or svg"):
        build_report(records, image_format="pdf")  # a page inlines PNG or SVG
    assert not out.exists()
