"""Every wiring of a sweep in the figures (the groups:g family between sequential and parallel, deep to shallow,
each with its own colour, marker and line style), learning curves only from runs of 2 epochs or more, PDF and SVG
files whose text stays text, and a sweep name holding markup shown as text. The stores here are hand-made
through the store's API: done runs with made-up metrics, no training."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import matplotlib
import pytest

from depthlab.records import RunRecord
from depthlab.report import build_report, plots, write_report
from depthlab.report.html import load_records

SVG = "{http://www.w3.org/2000/svg}"
SCRIPT_SWEEP = "<script>alert('wiring')</script>"  # as conftest names the wiring store's sweep


def svg_texts(path) -> list[str]:
    """The words of an SVG file's <text> elements."""
    return ["".join(t.itertext()).strip() for t in ET.parse(path).getroot().iter(f"{SVG}text")]


def test_wirings_are_ordered_deep_to_shallow_each_with_its_own_style():
    records = [RunRecord.make({"topology": t}) for t in ("parallel", "groups:2", "sequential", "groups:4", "parallel")]
    names = plots.wirings(records)
    assert names == ["sequential", "groups:4", "groups:2", "parallel"]
    styles = plots.wiring_styles(names)
    assert styles["sequential"].color == plots.TOPOLOGY_COLORS["sequential"]
    assert styles["parallel"].color == plots.TOPOLOGY_COLORS["parallel"]
    for part in ("color", "marker", "line"):
        assert len({str(getattr(s, part)) for s in styles.values()}) == 4, part


def test_the_groups_wirings_are_paired_with_the_deepest(wiring_store):
    records = load_records(wiring_store, SCRIPT_SWEEP)
    points = plots.scatter_points(records)
    assert {pt["reference"] for pt in points} == {"sequential"}
    assert sorted(pt["wiring"] for pt in points) == ["groups:2"] * 6 + ["parallel"] * 6
    cells = plots.winrate_cells(records)["synthetic"]
    assert cells == {w: {(4, 4): (3, 3), (4, 8): (3, 3)} for w in ("groups:2", "parallel")}
    # the curves take the pairs in turn from each shallower wiring: groups:2 shows though parallel differs more
    assert [p.config["topology"] for _, p, _ in plots.curve_runs(records, n=4)] == ["parallel", "groups:2"]


def test_every_wiring_appears_in_the_comparison_figures(wiring_store, tmp_path, cli):
    expected = {"scatter-val": ["against sequential", "groups:2", "parallel"],  # the legend
                "loss-vs-q": ["sequential (mean, n=6)", "groups:2 (mean, n=6)", "parallel (mean, n=6)"],
                "winrate": ["synthetic · groups:2 vs sequential", "synthetic · parallel vs sequential"],
                "curves": ["sequential", "groups:2", "parallel"]}  # the line styles' legend
    for kind, labels in expected.items():
        out = tmp_path / f"{kind}.svg"
        assert cli("plot", kind, "--store", str(wiring_store), "--out", str(out)) == 0
        texts = svg_texts(out)
        for label in labels:
            assert label in texts, (kind, label)
    assert any(t.endswith("vs groups:2  (d = -0.02)") for t in svg_texts(tmp_path / "curves.svg"))


def test_svg_text_stays_text_and_pdf_embeds_its_fonts(wiring_store, tmp_path, cli):
    before = {k: matplotlib.rcParams[k] for k in plots.SAVE_RC}
    svg, pdf = tmp_path / "pairs.svg", tmp_path / "pairs.pdf"
    for out in (svg, pdf):
        assert cli("plot", "scatter-val", "--store", str(wiring_store), "--out", str(out)) == 0
    assert "sequential: final validation loss" in svg_texts(svg)  # the x label, a <text> element
    assert 'id="DejaVuSans-' not in svg.read_text()  # no glyph outlines
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and b"/FontFile2" in data and b"/Subtype /Type3" not in data  # TrueType
    assert {k: matplotlib.rcParams[k] for k in plots.SAVE_RC} == before  # set for the save only


def test_one_epoch_runs_draw_no_learning_curves(one_epoch_store, wiring_store):
    records = load_records(one_epoch_store)
    assert plots.curve_runs(records) == []
    with pytest.raises(plots.NoData, match="at most 1 epoch of val_loss history: a learning curve needs 2"):
        plots.learning_curves(records)
    html = build_report(records, title="one epoch")
    assert re.search(r'<figure id="fig-curves"[^>]*><h3>[^<]*</h3><p class="nodata">no data: the done runs have '
                     r'at most 1 epoch', html)
    assert html.count('class="nodata">no data') == 1  # the other figures draw the final values
    lines = [line for ax in plots.learning_curves(load_records(wiring_store)).axes for line in ax.get_lines()]
    assert lines and all(len(line.get_xdata()) == 2 for line in lines)  # two epochs: lines, not dots


def test_a_hostile_sweep_name_is_escaped_and_svg_figures_inline(wiring_store, tmp_path):
    out = write_report(wiring_store, tmp_path / "r.html", sweep=SCRIPT_SWEEP, image_format="svg", by="width")
    html = open(out, encoding="utf-8").read()
    escaped = "&lt;script&gt;alert(&#39;wiring&#39;)&lt;/script&gt;"
    assert f"<title>depthlab report: {escaped}</title>" in html and f"<h1>depthlab report: {escaped}</h1>" in html
    assert f"sweeps: {escaped} (18)" in html
    assert "<script>alert" not in html and html.count("<script>") == 1  # the page's own sorting script only
    # the figures are <svg> elements in the page, their words <text>, one panel per width
    assert html.count("<svg ") == 5 and "<img" not in html
    texts = re.findall(r"<text[^>]*>([^<]*)</text>", html)
    assert "width = 4 · 6 pairs" in texts and "width = 8 · 6 pairs" in texts
