"""Each choice list is declared once (`depthlab.choices`, or its own light module) and everything else reads it:
the CLI's `choices=` and the help texts that list values, validation, the registries that implement the values,
and the benchmarks. The parser is built at call time, so a value added to a registry reaches the CLI by itself."""

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from depthlab import choices, precision, records
from depthlab.cli.main import build_parser
from depthlab.errors import SpecError
from depthlab.results import export
from depthlab.study import levels

# Every option with `choices=`, by its dest, and the module attribute that declares its values. A new option with
# choices must be declared in a registry and named here: a list written out in the CLI fails the first test.
REGISTRIES = {
    "norm": (choices, "NORMS"),
    "act": (choices, "ACTS"),
    "head": (choices, "HEADS"),
    "schedule": (choices, "SCHEDULES"),
    "stem_stride": (choices, "STEM_STRIDES"),
    "device": (choices, "DEVICES"),
    "backend": (choices, "BACKENDS"),
    "layout": (choices, "LAYOUTS"),
    "table": (choices, "COMPARE_TABLES"),
    "kind": (choices, "PLOT_KINDS"),
    "precision": (precision, "PRECISIONS"),
    "format": (export, "FORMATS"),
    "status": (records, "STATUSES"),
    "metric": (records, "METRICS"),
    "level": (levels, "LEVELS"),
}


def commands(parser=None, path=()):
    """(command path, its parser) for depthlab and every command and subcommand below it."""
    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


def options(parser=None):
    """(command path, action) for every option and positional of every command."""
    for path, p in commands(parser):
        for action in p._actions:
            if not isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)):
                yield path, action


def action(path: tuple, dest: str) -> argparse.Action:
    return next(a for p, a in options() if p == path and a.dest == dest)


def with_choices(parser=None):
    return [(path, a) for path, a in options(parser) if a.choices is not None]


def values_in(text: str, before: str, after: str | None = None) -> list[str]:
    """The comma-separated values that `text` lists between `before` and `after` (or its end)."""
    listed = text.split(before, 1)[1]
    listed = listed.split(after, 1)[0] if after else listed
    return [v.strip() for v in listed.split(",")]


def described_names(description: str, start: str, stop: str) -> list[str]:
    """The names of a `described` block (a name at the start of each of its lines, continuations indented)."""
    block = description.split(start, 1)[1].split(stop, 1)[0]
    return re.findall(r"^  (\S+)  ", block, re.M)


# ---------------------------------------------------------------------------------------------- choices=


def test_every_choice_list_of_the_cli_is_its_registry():
    found = with_choices()
    assert {a.dest for _, a in found} == set(REGISTRIES)  # every registry is used, and nothing else
    for path, a in found:
        module, name = REGISTRIES[a.dest]
        assert list(a.choices) == list(getattr(module, name)), (path, a.dest)


def extended(values):
    """`values` with one value more, of the same kind."""
    if isinstance(values, dict):
        return {**values, "extra": "a value added in a test"}
    return (*values, 4 if isinstance(values[0], int) else "extra")


@pytest.mark.parametrize("dest", sorted(REGISTRIES))
def test_a_value_added_to_a_registry_reaches_every_option_that_offers_it(monkeypatch, dest):
    module, name = REGISTRIES[dest]
    new = extended(getattr(module, name))
    monkeypatch.setattr(module, name, new)
    offered = [a for _, a in with_choices(build_parser()) if a.dest == dest]
    assert offered and all(list(a.choices) == list(new) for a in offered)


def test_a_new_norm_is_accepted_by_the_cli_without_another_edit(monkeypatch):
    monkeypatch.setattr(choices, "NORMS", (*choices.NORMS, "layer"))
    parser = build_parser()
    assert parser.parse_args(["erf", "--norm", "layer"]).norm == "layer"
    assert parser.parse_args(["lesion", "--norm", "layer"]).norm == "layer"
    assert "--norm {batch,group,none,layer}" in dict(commands(parser))[("expand",)].format_help()


def test_a_value_outside_the_registry_is_refused_naming_the_allowed_ones(capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["lesion", "--norm", "layer"])
    assert stop.value.code == 2
    allowed = ", ".join(map(repr, choices.NORMS))
    assert f"argument --norm: invalid choice: 'layer' (choose from {allowed})" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- help texts


def test_a_help_that_says_one_of_lists_exactly_the_choices():
    listing = [(path, a) for path, a in with_choices() if a.help and "one of: " in a.help]
    assert listing  # `depthlab plot KIND`
    for path, a in listing:
        assert a.help.split("one of: ", 1)[1].split(", ") == list(a.choices), path


def test_the_helps_that_list_values_list_their_registry_s():
    methods = action(("shift",), "methods").help
    assert values_in(methods, "of: ", " (default") == list(choices.SHIFT_METHODS)
    assert values_in(action(("erf",), "branch").help, "(", ")") == list(choices.BRANCH_TYPES)
    assert values_in(action(("erf",), "reparam").help, ": ") == list(choices.REPARAMS)
    assert action(("erf",), "branch").default == list(choices.BRANCH_TYPES)  # every type unless told
    for path, dest in [(("expand",), "scales"), (("paths",), "scale")]:
        assert values_in(action(path, dest).help, ": ", " or a number") == list(choices.SCALE_RULES)
    fixed = [rule for rule in choices.SCALE_RULES if rule != "learnable"]
    for path in [("lesion",), ("convert",)]:
        assert values_in(action(path, "residual_scale").help, ": ", " or a number") == fixed
    images = " or ".join("." + f for f in choices.IMAGE_FORMATS)
    assert images in action(("plot",), "out").help and images in action(("prune",), "plot").help


def test_the_described_values_are_the_registry_s_in_its_order():
    parsers = dict(commands())
    shift, plot = parsers[("shift",)].description, parsers[("plot",)].description
    assert described_names(shift, "Methods (", "One row") == list(choices.SHIFT_METHODS)
    assert described_names(plot, "slides:\n", "The format") == list(choices.PLOT_KINDS)
    for text in choices.PLOT_KINDS.values():
        assert text in plot


def test_the_readme_lists_each_field_s_values_as_its_registry():
    """The README's list of run fields is written by hand (nothing generates it): it must name the same values."""
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    fields = dict(branch="BRANCH_TYPES", reparam="REPARAMS", budget_by="BUDGET_BY", norm="NORMS", act="ACTS",
                  head="HEADS", init="INITS", residual_scale="SCALE_RULES", optimizer="OPTIMIZERS",
                  schedule="SCHEDULES", augment="AUGMENTS")
    for field, name in fields.items():
        inside = re.search(rf"`{field}` \(((?:[^()]|\([^()]*\))*)\)", readme).group(1)  # "1/sqrt(n)" nests
        listed = inside.split(";")[0].split(", ")
        values = [v.split(" = ")[0].strip('"') for v in listed if not v.startswith("or ")]
        assert values == list(getattr(choices, name)), field


# ---------------------------------------------------------------------------------------------- readers


def test_validation_reads_the_registries_and_names_their_values():
    from depthlab.models import ModelSpec, spec
    from depthlab.shift.methods import Method
    from depthlab.spec import config

    for name in ("NORMS", "ACTS", "HEADS", "INITS", "SCALE_RULES", "STEM_STRIDES", "BRANCH_TYPES", "REPARAMS"):
        assert getattr(spec, name) is getattr(choices, name), name
    for name in ("OPTIMIZERS", "SCHEDULES", "AUGMENTS", "BUDGET_BY"):
        assert getattr(config, name) is getattr(choices, name), name
    cases = [(lambda: ModelSpec(norm="layer"), ", ".join(choices.NORMS)),
             (lambda: ModelSpec(branch="mlp"), ", ".join(choices.BRANCH_TYPES)),
             (lambda: ModelSpec(stem_stride=3), "1 or 2"),
             (lambda: config.RunConfig(schedule="step"), ", ".join(choices.SCHEDULES)),
             (lambda: Method("ttt"), ", ".join(choices.SHIFT_METHODS))]
    for make, allowed in cases:
        with pytest.raises(SpecError) as err:
            make()
        assert err.value.allowed == allowed


def test_the_implementations_are_keyed_by_the_registries():
    from depthlab.models import branches
    from depthlab.report import plots
    from depthlab.shift import methods

    assert list(branches.BRANCHES) == list(choices.BRANCH_TYPES)
    assert branches.REPARAMS == choices.REPARAMS  # still written there too: to be read from depthlab.choices
    assert list(plots.KINDS) == list(choices.PLOT_KINDS)
    assert plots.FORMATS is choices.IMAGE_FORMATS
    assert methods.METHODS == tuple(choices.SHIFT_METHODS)


def test_the_sweep_benchmark_offers_the_precisions_of_depthlab(capsys):
    path = Path(__file__).resolve().parents[2] / "bench" / "sweep_throughput.py"
    spec = importlib.util.spec_from_file_location("bench_sweep_throughput_choices", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.PRECISIONS is precision.PRECISIONS
    with pytest.raises(SystemExit):
        bench.main(["--precision", "fp8"])
    assert f"(choose from {', '.join(map(repr, precision.PRECISIONS))})" in capsys.readouterr().err


def test_no_help_says_default_none():
    """An unset option's help says what unset means; "(default: None)" beside it said nothing more."""
    saying = [" ".join(path) for path, parser in commands() if "(default: None)" in parser.format_help()]
    assert saying == []
