"""The HTML report and the figures, built from a store made by a tiny real sweep: the tables carry the numbers of
`compare_report`, formatted as `depthlab compare` prints them; every figure is there; user strings are escaped;
a figure without data is a note; the `plot` command writes valid PNG and SVG files."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from depthlab.analysis.compare import ALL, _ci, _fmt, compare_report
from depthlab.cli.report import PLOT_KINDS
from depthlab.errors import DepthlabError
from depthlab.report import build_report, plots, write_report
from depthlab.report.html import FIGURES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE, HOSTILE_SWEEP = "<script>alert(1)</script>", "<b>x</b>"  # as conftest puts them in the store


@pytest.fixture(scope="module")
def compare(records):
    return compare_report(records)  # what `depthlab compare --json` prints for this store


@pytest.fixture(scope="module")
def tables(report_html, html_tables):
    return html_tables(report_html)


def test_paired_tables_match_compare(tables, compare):
    for metric, (res,) in compare["paired"].items():
        assert res["groups"], "the tiny sweep has pairs"
        header, *rows = tables[f"paired-{metric}"]
        assert header == ["dataset", "Q band", "pairs", "excl", "mean d", "median d", "CI",
                          "wins parallel/sequential/tie", "margin", "TOST p", "verdict"]
        assert len(rows) == len(res["groups"])
        for row, g in zip(rows, res["groups"]):
            tost = None if g["tost_p"] is None else float(f"{g['tost_p']:.3g}")
            assert row == [g["dataset"], g["q_band"], _fmt(g["n_pairs"]), _fmt(g["n_excluded"]), _fmt(g["mean"]),
                           _fmt(g["median"]), _ci(g["ci_low"], g["ci_high"]),
                           f"{g['wins_b']}/{g['wins_a']}/{g['ties']}", _fmt(g["margin"]),
                           _fmt(tost), g["verdict"]]


def test_band_table_and_status_counts_match_compare(tables, compare):
    header, *rows = tables["band-table"]
    assert header[:4] == ["dataset", "topology", "Q band", "n"]
    assert rows == [[r["dataset"], r["value"], r["q_band"], _fmt(r["n"]), _fmt(r["train_loss_mean"]),
                     _fmt(r["train_loss_std"]), _fmt(r["val_loss_mean"]), _fmt(r["val_loss_std"]),
                     _fmt(r["train_acc_mean"]), _fmt(r["val_acc_mean"])] for r in compare["band_table"]]
    status = {row[0]: row[1] for row in tables["status-table"][1:]}
    assert status == {**{s: str(n) for s, n in compare["counts"].items()}, "total": str(compare["n_runs"])}


def test_headline_shows_the_all_band_verdicts(report_html, compare):
    headline = report_html.split('id="headline"')[1].split("</section>")[0]
    for (res,) in compare["paired"].values():
        for g in res["groups"]:
            if g["q_band"] == ALL:
                assert f">{g['verdict']}</span>" in headline
                assert f"mean d {_fmt(g['mean'])}" in headline


def test_every_figure_is_an_inline_png(report_html):
    assert sorted(kind for kind, *_ in FIGURES) == sorted(plots.KINDS) == sorted(PLOT_KINDS)
    assert 'id="fig-erf"' not in report_html  # the sweep varies neither kernel nor branch
    for kind in set(plots.KINDS) - set(plots.CONDITIONAL):
        match = re.search(rf'<figure id="fig-{kind}"[^>]*>.*?<img alt="{kind}" src="data:image/png;base64,'
                          r'([A-Za-z0-9+/=]+)"', report_html, re.S)
        assert match, f"figure {kind} missing"
        png = base64.b64decode(match.group(1))
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
    assert "no data" not in report_html


def test_report_is_self_contained(report_html, records, html_tables):
    assert report_html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", report_html)  # nothing fetched
    assert "<link" not in report_html and "<script src" not in report_html
    assert "Content-Security-Policy" in report_html
    rows = html_tables(report_html)["runs-table"]
    assert len(rows) == 1 + len(records)
    assert {r[0] for r in rows[1:]} == {r.run_id for r in records}


def test_config_strings_and_sweep_names_are_escaped(report_html, tables):
    assert "<script>alert" not in report_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report_html
    assert HOSTILE_SWEEP not in report_html
    assert "&lt;b&gt;x&lt;/b&gt;" in report_html
    header, *rows = tables["runs-table"]
    assert "norm" in header  # varies across the runs, so it is a column
    assert HOSTILE in [row[header.index("norm")] for row in rows]  # shown as text, verbatim


def test_figures_without_data_are_notes(records):
    pending = [r for r in records if r.status == "pending"]
    html = build_report(pending, title="nothing yet")
    for kind in set(plots.KINDS) - set(plots.CONDITIONAL):
        assert re.search(rf'<figure id="fig-{kind}"[^>]*><h3>[^<]*</h3><p class="nodata">no data: ', html), kind
    assert "<img" not in html
    # one wiring only: no pair, so no scatter or win rate, but loss-vs-Q and curves of single runs
    html = build_report([r for r in records if r.config["topology"] == "sequential"], title="deep only")
    assert html.count('class="nodata">no data') == 3
    assert "No pairs of runs differing only in topology" in html


def test_figure_data_agree_with_the_pairs_compared(records, compare):
    for metric in ("val_loss", "train_loss"):
        points = plots.scatter_points(records, metric)
        overall = next(g for g in compare["paired"][metric][0]["groups"] if g["q_band"] == ALL)
        assert len(points) == overall["n_pairs"] == 6
    cells = plots.winrate_cells(records)
    overall = next(g for g in compare["paired"]["val_loss"][0]["groups"] if g["q_band"] == ALL)
    assert list(cells["synthetic"]) == ["parallel"]  # against sequential, the deepest wiring
    assert sum(w for w, _ in cells["synthetic"]["parallel"].values()) == overall["wins_b"]
    assert sorted(cells["synthetic"]["parallel"]) == [(2, 4), (3, 4)]
    chosen = plots.curve_runs(records, n=3)
    assert sum(1 + (p is not None) for _, p, _ in chosen) == 3
    diffs = [abs(d) for _, _, d in chosen]
    assert diffs == sorted(diffs, reverse=True)
    all_diffs = sorted((abs(p.val_loss - s.val_loss) for s, p in plots.used_pairs(records)), reverse=True)
    assert diffs == pytest.approx(all_diffs[:2])


def test_missing_store_is_a_user_error(tmp_path, cli, capsys, sweep_store):
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(DepthlabError, match="no results store"):
        write_report(missing, tmp_path / "r.html")
    assert cli("report", "--store", str(missing), "--out", str(tmp_path / "r.html")) == 2
    assert "no results store" in capsys.readouterr().err
    assert not missing.exists() and not (tmp_path / "r.html").exists()
    assert cli("plot", "curves", "--store", str(missing), "--out", str(tmp_path / "c.png")) == 2
    with pytest.raises(DepthlabError, match="no runs of sweep 'other'"):
        write_report(sweep_store, tmp_path / "r.html", sweep="other")


def test_plot_writes_png_and_svg(sweep_store, tmp_path, cli, capsys):
    png, svg = tmp_path / "scatter.png", tmp_path / "winrate.svg"
    assert cli("plot", "scatter-val", "--store", str(sweep_store), "--out", str(png)) == 0
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 300 and height > 300
    assert cli("plot", "winrate", "--store", str(sweep_store), "--out", str(svg), "--sweep", "tiny") == 0
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "wrote" in capsys.readouterr().out
    # a format we cannot tell, and a figure with no data (the hostile sweep's one run is pending), are errors
    assert cli("plot", "curves", "--store", str(sweep_store), "--out", str(tmp_path / "c.jpg")) == 2
    assert "use a .png or .svg" in capsys.readouterr().err
    assert cli("plot", "scatter-train", "--store", str(sweep_store), "--sweep", HOSTILE_SWEEP,
               "--out", str(tmp_path / "s.png")) == 2
    assert "no sequential/parallel pairs" in capsys.readouterr().err
    assert not (tmp_path / "c.jpg").exists() and not (tmp_path / "s.png").exists()


def test_the_receptive_field_figure_appears_when_kernels_vary(records):
    done = [r for r in records if r.status == "done"]
    assert all(r.extra.get("receptive_field") and r.extra.get("erf90") for r in done)  # every run records them
    varied = []
    for i, r in enumerate(done):
        change = dict(kernel=5 if i % 2 else 3, branch="lk" if i % 3 == 0 else "conv")
        varied.append(replace(r, config={**r.config, **change}))
    html = build_report(varied, title="kernels")
    match = re.search(r'<figure id="fig-erf"[^>]*>.*?<img alt="erf" src="data:image/png;base64,', html, re.S)
    assert match
    assert len(plots.erf_points(varied)) == len(done)
