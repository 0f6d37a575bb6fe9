"""The study page (depthlab.study.html) from a hand-made study result: its sections in order, escaping, editable
SVG text, the undecided state, missing values, the atomic write, and the page in headless Chromium."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path

import pytest

from depthlab.study.html import pareto_front, render_study_html, write_study_html

# The report tests' Chromium fixture (found or installed, else skip) and runner, shared rather than copied.
_spec = importlib.util.spec_from_file_location(
    "_report_browser", Path(__file__).resolve().parents[1] / "report" / "test_report_browser.py")
_browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_browser)
chromium = _browser.chromium  # the module-scoped fixture
headless = _browser.headless

HOSTILE = "d2-<script>alert(1)</script>"
CHOICE_TEXT = "d4-parallel"
WOULD_DECIDE = "more seeds (level standard) for the wiring lever"


def design(name, blocks, topology, mean, std, latency, levers=("depth",), params=19880):
    return {"name": name, "label": f"{blocks} blocks, {topology}", "levers": list(levers), "blocks": blocks,
            "width": 48 // blocks, "topology": topology, "branch": "conv", "kernel": 3, "params": params,
            "flops": 3_900_000, "seeds": 3, "n_learned": 3, "metric_mean": mean, "metric_std": std,
            "val_acc_mean": mean, "val_loss_mean": 0.1, "train_samples_per_s": 5400.0,
            "latency_b1_ms": latency, "latency_b256_ms": None if latency is None else latency * 30}


def verdict(a, b, a_mean, b_mean, words, stopped="decided", decided=True):
    return {"a": a, "b": b, "a_label": a, "b_label": b, "a_mean": a_mean, "b_mean": b_mean, "n_pairs": 3,
            "seeds": 3, "d_mean": None if a_mean is None else b_mean - a_mean, "ci_low": -0.004, "ci_high": 0.002,
            "tost_p": 0.012, "verdict": words, "decided": decided, "stopped": stopped}


def budget(size, decided, shift=0.0):
    designs = [design("d1-sequential", 1, "sequential", 0.930 + shift, 0.004, 0.20),
               design(HOSTILE, 2, "sequential", 0.955 + shift, 0.003, 0.28, levers=("depth", "wiring")),
               design("d4-sequential", 4, "sequential", 0.971 + shift, 0.003, 0.41, levers=("depth", "wiring")),
               design(CHOICE_TEXT, 4, "parallel", 0.970 + shift, 0.002, 0.21, levers=("wiring",)),
               design("d8-sequential", 8, "sequential", 0.965 + shift, None, None)]  # no latency, no std
    levers = [
        {"lever": "depth", "title": "Depth against width",
         "question": "fewer wider blocks or more narrower ones, at equal parameters", "reference": "Zagoruyko 2016",
         "contrast": "blocks", "skipped": None,
         "verdicts": [verdict("d1-sequential", "d4-sequential", 0.930, 0.971, "b better"),
                      verdict(HOSTILE, "d4-sequential", 0.955, 0.971, "inconclusive", "seed cap (5)", False)]},
        {"lever": "wiring", "title": "Sequential against parallel", "question": "deep stack or parallel branches",
         "reference": None, "contrast": "topology", "skipped": None,
         "verdicts": [verdict("d4-sequential", CHOICE_TEXT, 0.971, 0.970, "equivalent within ±0.01"),
                      verdict("d4-sequential", "d8-sequential", None, None, "not learned", "not learned", False)]},
        {"lever": "crop", "title": "Random crops", "question": "does cropping help", "reference": "...",
         "contrast": "crop", "skipped": "the dataset is too small to crop", "verdicts": []},
    ]
    rec = {"decided": decided, "best": "d4-sequential", "not_worse": ["d4-sequential", CHOICE_TEXT],
           "choice": CHOICE_TEXT,
           "evidence": [f"{CHOICE_TEXT}: val_acc 0.970 vs 0.971 (d -0.001, 95% CI -0.004..0.002); 0.21 ms vs 0.41 ms"],
           "why": "the cheapest design not worse than the best",
           "what_would_decide": None if decided else WOULD_DECIDE}
    cells = [{"design": d["name"], "corruption": c, "method": m, "batch_size": bs,
              "accuracy": 0.6 + 0.05 * i + 0.02 * j, "n": 3}
             for i, d in enumerate(designs[:4]) for j, c in enumerate(["shot_noise", "fog"])
             for m in ("source", "tent") for bs in (1, 64)]
    robustness = {"skipped": None, "methods": ["source", "alpha_bn", "tent"], "batch_sizes": [1, 64],
                  "corruptions": ["shot_noise", "fog", "snow"], "cells": cells}
    return {"budget": size, "designs": designs, "levers": levers, "recommendation": rec, "robustness": robustness}


def make_result():
    second = budget(80000, decided=False, shift=0.01)
    second["robustness"] = {"skipped": "synthetic has no corruption suite", "methods": [], "batch_sizes": [],
                            "corruptions": [], "cells": []}
    return {"study": "mnist-quick", "dataset": "mnist", "level": "quick", "metric": "val_acc",
            "higher_is_better": True, "margin": 0.01, "alpha": 0.05, "looks": 2, "alpha_per_look": 0.025,
            "device": "cpu", "precision": "bf16", "threads": 2,
            "seconds": {"training": 312.4, "cost": 10.2, "shift": 40.1, "total": 380.0},
            "budgets": [budget(20000, decided=True), second]}


@pytest.fixture(scope="module")
def result():
    return make_result()


@pytest.fixture(scope="module")
def page(result):
    return render_study_html(result)


@pytest.fixture(scope="module")
def written(result, tmp_path_factory):
    path = tmp_path_factory.mktemp("study_html") / "study.html"
    write_study_html(result, path)
    return path


def svgs(html: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", html, flags=re.S)


def test_sections_come_in_order(page):
    marks = ['id="recommendation"', 'id="rec-0"', 'id="frontier"', 'id="fig-depth"', 'id="fig-pareto-0"',
             'id="levers"', 'id="lever-0-0"', 'id="robustness"', 'id="fig-robustness-0"']
    positions = [page.index(m) for m in marks]
    assert positions == sorted(positions)
    # the recommendation card leads with the choice, its metric beside it
    card = page[page.index('id="rec-0"'):page.index('id="rec-1"')]
    assert CHOICE_TEXT in card and "val_acc 0.9700 ± 0.002" in card
    assert card.index("choice") < card.index("best") < card.index("not worse")


def test_user_text_is_escaped(page):
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # in the tables, and in the figures' SVG text


def test_svg_text_stays_text(page):
    figures = svgs(page)
    assert len(figures) == 4  # depth frontier, a Pareto figure per budget, one robustness heat map
    for svg in figures:
        assert "<text" in svg
        assert "DejaVuSans-" not in svg  # no glyph outlines (svg.fonttype 'path' would define them)
    assert "d4-sequential" in svgs(page)[1]  # the Pareto set is named


def test_undecided_says_what_would_decide(page):
    decided = page[page.index('id="rec-0"'):page.index('id="rec-1"')]
    undecided = page[page.index('id="rec-1"'):page.index('id="frontier"')]
    assert "Undecided." not in decided and "provisional choice" not in decided
    assert "Undecided." in undecided and WOULD_DECIDE in undecided and "provisional choice" in undecided


def test_skips_and_missing_values(page):
    assert "Skipped: the dataset is too small to crop" in page
    assert "Skipped: synthetic has no corruption suite" in page
    assert "None" not in page and not re.search(r"\bnan\b", page, flags=re.I)
    rows = page[page.index('id="lever-0-1"'):page.index('id="lever-0-2"')]
    assert "not learned" in rows and "–" in rows


def test_pareto_front():
    designs = make_result()["budgets"][0]["designs"]
    # HOSTILE (0.955 at 0.28 ms) loses to d4-parallel (0.970 at 0.21 ms); d8 has no latency
    assert pareto_front(designs) == ["d1-sequential", "d4-sequential", CHOICE_TEXT]
    # lower is better: the lowest metric at the lowest latency dominates everything slower
    assert pareto_front(designs, higher_is_better=False) == ["d1-sequential"]


@pytest.mark.parametrize("variant", ["empty", "no budgets", "all none"])
def test_renders_when_empty_or_none(result, variant):
    if variant == "empty":
        data = {}
    elif variant == "no budgets":
        data = dict(result, budgets=[])
    else:
        data = copy.deepcopy(result)
        for b in data["budgets"]:
            for d in b["designs"]:
                d.update({k: None for k in d if k not in ("name", "levers")})
            for lever in b["levers"]:
                for v in lever["verdicts"]:
                    v.update({k: None for k in v})
            b["recommendation"] = {k: None for k in b["recommendation"]}
            b["robustness"] = None
        data["seconds"] = None
    html = render_study_html(data)
    assert "None" not in html
    assert html.index('id="recommendation"') < html.index('id="frontier"') < html.index('id="levers"') \
        < html.index('id="robustness"')
    assert 'class="nodata">No figure:' in html


def test_write_is_atomic(result, tmp_path, monkeypatch):
    from depthlab.errors import DepthlabError

    path = tmp_path / "study.html"
    path.write_text("previous")

    def half_then_full_disk(self, data, encoding=None):
        with open(self, "w", encoding=encoding) as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    with pytest.raises(DepthlabError, match="cannot write"):
        write_study_html(result, path)
    monkeypatch.undo()
    assert path.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["study.html"]


def test_written_file_is_the_page(written):
    page = written.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


def test_page_loads_in_chromium(chromium, written, tmp_path):
    run = headless(chromium, tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", written.resolve().as_uri())
    dom, log = run.stdout.decode(errors="replace"), run.stderr.decode(errors="replace")
    assert 'id="rec-0"' in dom, log[-2000:]
    assert "provisional choice" in dom and WOULD_DECIDE in dom and CHOICE_TEXT in dom
    # the page runs no script: any console message (an error, a blocked script or style) is a failure
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, console


def test_a_design_over_the_budget_is_drawn_but_not_on_the_front():
    """The crop lever's mask runs as its dense network (twice the budget): it is no candidate, so the Pareto set
    of the budget must not count it, however good and fast it looks."""
    from depthlab.study.html import pareto_figure

    b = budget(20_000, True)
    b["designs"] = b["designs"] + [design("d4-mask", 4, "sequential", 0.999, 0.001, 0.01, levers=("crop",),
                                          params=40_000)]
    b["recommendation"] = {**b["recommendation"], "over_budget": ["d4-mask"]}
    names = {t.get_text() for t in pareto_figure(make_result(), b).axes[0].texts}
    assert "d4-mask" not in names and CHOICE_TEXT in names
