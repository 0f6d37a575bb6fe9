"""Sweep specs: YAML → validated list of `RunConfig`s.

A spec has a `name`, a `description`, `defaults` (fields every run shares), a `grid` (field → list of values:
the cartesian product) and optionally `runs`: a list of sub-grids, each merged over the grid (its keys replace
the grid's) — the way to express "BN rows here, Fixup rows there" in one spec. A field whose one value is itself
a list (`hidden`, one width per block) is varied by a list of such lists (`hidden: [[8, 16], [4, 4]]`); a flat
list that could be read either way is refused. `exclude` drops the runs that match any of its partial configs.
Every run is validated before anything trains, including its data fields against the dataset's standard size.

Spec files are read as YAML with numbers as in YAML 1.2 (`1e-3` is a float, not the string YAML 1.1 makes of it),
and refused when a mapping repeats a key, when aliases expand to an absurd size, or when they loop.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from depthlab.errors import DepthlabError, SpecError
from depthlab.records import config_id

# depthlab.spec.config (torch) is imported where it is used: `depthlab run --help` imports this module.
if TYPE_CHECKING:
    from depthlab.spec.config import RunConfig

SPEC_KEYS = ("name", "description", "defaults", "grid", "runs", "exclude")
PRESETS = ("demo", "paper", "smoke")
MAX_RUNS = 1_000_000  # more runs than any store or machine can hold; expanding them alone takes minutes
MAX_NAME = 200  # characters of a sweep name (it labels every line of output and every store row)
MAX_SUFFIX = 100  # characters of the `[overrides]` suffix of a name before it is replaced by a short hash
# C0 and C1 control characters, and the Unicode text-direction overrides and isolates: printed raw by `run` and
# `status`, they move the cursor, clear lines or reorder what a terminal shows
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MAX_NODES = 100_000  # YAML nodes of a spec, aliases expanded: far above any real spec, far below an alias bomb


@dataclass
class SweepSpec:
    name: str
    description: str = ""
    defaults: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    runs: list = field(default_factory=list)
    exclude: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, values: dict, origin: str = "spec") -> "SweepSpec":
        if not isinstance(values, dict):
            raise SpecError(origin, type(values).__name__, "a mapping with keys " + ", ".join(SPEC_KEYS))
        for key in values:
            if key not in SPEC_KEYS:
                raise SpecError(key, values[key], "a spec key: " + ", ".join(SPEC_KEYS))
        name = values.get("name")
        description = values.get("description")
        if description is not None and not _is_text(description):
            raise SpecError("description", type(description).__name__, "a string")
        spec = cls(name=check_name(Path(origin).stem if name is None or name == "" else name),
                   description=str(description or ""),
                   defaults=values.get("defaults") or {}, grid=values.get("grid") or {},
                   runs=values.get("runs") or [], exclude=values.get("exclude") or [])
        _check_fields("defaults", spec.defaults)
        _check_fields("grid", spec.grid)
        for i, sub in enumerate(spec.runs):
            _check_fields(f"runs[{i}]", sub)
        for i, sub in enumerate(spec.exclude):
            _check_fields(f"exclude[{i}]", sub)
        spec._check_list_values()
        return spec

    def _check_list_values(self, overrides: dict | None = None) -> None:
        """SpecError for a flat list, given to vary a field whose one value may itself be a list (`hidden`), that is
        as long as the blocks of a run it makes: `hidden: [8, 16]` is two runs of one width each, as every grid
        list is, and with two blocks one run of a width per block as well. `overrides`: the --set fields."""
        from depthlab.spec.config import RunConfig, list_fields

        for i, sub in enumerate(self.runs or [{}]):
            merged = {**self.grid, **sub}
            blocks = merged.get("blocks", self.defaults.get("blocks", RunConfig.blocks))
            blocks = set(blocks if isinstance(blocks, list) else [blocks])
            for key in list_fields():
                value = merged.get(key)
                if isinstance(value, list) and not any(isinstance(v, list) for v in value) and len(value) in blocks:
                    where = "--set" if key in (overrides or {}) else f"runs[{i}]" if key in sub else "grid"
                    raise _either_way(where, key, value)

    def _subgrids(self) -> list[dict]:
        return [{**self.grid, **sub} for sub in self.runs] or [self.grid]

    def size(self) -> int:
        """The number of runs before `exclude` and duplicates are dropped (an upper bound of `len(configs())`),
        from the lengths of the grid's lists alone: instant for any grid."""
        return sum(math.prod(len(v) if isinstance(v, list) else 1 for v in sub.values())
                   for sub in self._subgrids())

    def check_size(self) -> int:
        """`size()`, or DepthlabError when it exceeds MAX_RUNS."""
        size = self.size()
        if size > MAX_RUNS:
            raise DepthlabError(f"sweep {self.name!r} has {size:,} runs (the product of its grid's lists); at most "
                                f"{MAX_RUNS:,} are allowed: split it into smaller sweeps")
        return size

    def configs(self) -> list[RunConfig]:
        """Every run of the sweep, validated, in a stable order, without duplicates. An absurd grid is refused
        before it is expanded (see MAX_RUNS)."""
        from depthlab.spec.config import RunConfig

        self.check_size()
        seen, out = set(), []
        for sub in self._subgrids():
            keys = list(sub)
            values = [v if isinstance(v, list) else [v] for v in sub.values()]
            for combo in itertools.product(*values):
                fields_ = {**self.defaults, **dict(zip(keys, combo))}
                try:
                    config = RunConfig.from_dict(fields_)
                except SpecError as err:
                    if self._excluded(fields_):
                        continue  # an excluded combination need not be valid
                    raise SpecError(err.field, err.value, f"{err.allowed} (in sweep '{self.name}', run "
                                    f"{_short(fields_)})") from None
                if self._excluded(config.to_dict()):  # matched on full configs: defaults count too
                    continue
                try:
                    check_data_sizes(config)
                except SpecError as err:
                    raise SpecError(err.field, err.value, f"{err.allowed} (in sweep '{self.name}', run "
                                    f"{_short(fields_)})") from None
                key = config_id(config.to_dict())
                if key not in seen:
                    seen.add(key)
                    out.append(config)
        return out

    def with_overrides(self, overrides: dict) -> "SweepSpec":
        """A copy in which each field of `overrides` takes the given value in every run: a scalar replaces the
        field in defaults, grid and runs alike; a list becomes the field's grid axis. The name records the
        overrides, so that the overridden sweep's runs are compared among themselves in a shared store; overrides
        longer than MAX_SUFFIX characters are named by a short hash of them instead (`depthlab run --name` gives
        a sweep a name of one's choosing)."""
        _check_fields("--set", overrides)
        if not overrides:
            return self
        defaults, grid = dict(self.defaults), dict(self.grid)
        runs = [{k: v for k, v in sub.items() if k not in overrides} for sub in self.runs]
        for key, value in overrides.items():
            defaults.pop(key, None)
            grid.pop(key, None)
            (grid if isinstance(value, list) else defaults)[key] = value
        suffix = ",".join(f"{k}={v}" for k, v in overrides.items()).replace(" ", "")
        if len(suffix) > MAX_SUFFIX:  # a name must stay a label; the hash still tells override sets apart
            digest = hashlib.sha256(suffix.encode()).hexdigest()[:12]
            keys = ",".join(overrides)
            suffix = f"{keys} #{digest}" if len(keys) <= MAX_SUFFIX - 14 else f"{len(overrides)} fields #{digest}"
        spec = SweepSpec(name=f"{self.name}[{suffix}]", description=self.description, defaults=defaults,
                         grid=grid, runs=runs, exclude=list(self.exclude))
        spec._check_list_values(overrides)
        return spec

    def _excluded(self, values: dict) -> bool:
        return any(all(_same(values.get(k), v) for k, v in ex.items()) for ex in self.exclude)


def check_name(value) -> str:
    """A sweep name: a string (a number is turned into one) of 1 to MAX_NAME characters, without control
    characters; SpecError otherwise (a list or mapping is named by its type only, never printed: an alias bomb
    would expand)."""
    if not _is_text(value):
        raise SpecError("name", type(value).__name__, f"a string of at most {MAX_NAME} characters")
    name = str(value)
    if not name.strip() or len(name) > MAX_NAME or CONTROL.search(name):
        shown = name if len(name) <= 60 else f"{name[:60]}... ({len(name)} characters)"
        raise SpecError("name", ascii(shown), f"a non-empty string of at most {MAX_NAME} characters, without "
                        "control characters or text-direction overrides")
    return name


def check_data_sizes(config: RunConfig) -> None:
    """SpecError unless val_split, train_subset and test_subset fit the dataset's standard train and test sizes
    (as `depthlab.data.load` would carve them), so that a run too big for its data is refused before anything
    trains."""
    from depthlab.data.datasets import validation_count
    from depthlab.data.registry import entry

    n_train, n_test = entry(config.dataset).sizes
    n_val = validation_count(n_train, config.val_split)
    size = f"{config.dataset} has {n_train} train and {n_test} test examples"
    if n_val >= n_train:
        raise SpecError("val_split", config.val_split, f"a count below {n_train} or a fraction in [0, 1) ({size})")
    if config.train_subset is not None and config.train_subset > n_train - n_val:
        raise SpecError("train_subset", config.train_subset,
                        f"at most {n_train - n_val} ({size}; val_split holds out {n_val})")
    if config.test_subset is not None and config.test_subset > n_test:
        raise SpecError("test_subset", config.test_subset, f"at most {n_test} ({size})")


def parse_overrides(items: list[str]) -> dict:
    """["width=8", "blocks=[2, 4]"] -> {"width": 8, "blocks": [2, 4]}; values are read as YAML (as spec files
    are: 1e-3 is a number)."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError("--set", item, "FIELD=VALUE, e.g. width=8 or blocks=[2,4]")
        key = key.strip()
        if key in out:
            raise SpecError(f"--set {key}", item, f"one --set per field ({key} is already {out[key]!r})")
        try:
            value = load_yaml(text)
        except yaml.YAMLError as err:
            raise SpecError(f"--set {key}", text, f"a YAML value ({yaml_problem(err)})") from None
        except RecursionError:
            raise SpecError(f"--set {key}", text[:60], "a YAML value (this one is nested too deeply)") from None
        if value == []:
            raise SpecError(f"--set {key}", text, "a value, or a non-empty list of values")
        out[key] = value
    return out


def _check_fields(where: str, values) -> None:
    from depthlab.spec.config import field_names

    if not isinstance(values, dict):
        raise SpecError(where, values, "a mapping of run fields to values")
    allowed = field_names()
    for key in values:
        if key not in allowed:
            raise SpecError(f"{where}.{key}", values[key], "a run field: " + ", ".join(allowed))


def _either_way(where: str, key: str, value: list) -> SpecError:
    """The error of a flat list that reads both as values to vary and as one per-block value, showing how to
    write each in `where` (grid, runs[i] or --set)."""
    each = ", ".join(f"{{{key}: {v}}}" for v in value)
    why = f"with {len(value)} blocks, {value} reads either way"
    if where == "--set":
        flat = ",".join(map(str, value))
        return SpecError(f"--set {key}", value, f"--set '{key}=[[{flat}]]' for {key} {value}, one per block (a "
                         f"list given to --set is the values to vary; {why}), or a spec's runs: [{each}] for a run "
                         "of each")
    return SpecError(f"{where}.{key}", value, f"{[value]} for {key} {value}, one per block (a grid's list is the "
                     f"values to vary; {why}), or runs: [{each}] for a run of each")


def _short(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _is_text(value) -> bool:
    """A string, or a number that reads as one (never a bool, a list or a mapping)."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _same(a, b) -> bool:
    """Equal, and a bool matches only a bool (True == 1 in Python; never in a spec); a list matches the tuple
    that validation makes of it (`hidden`)."""
    a, b = (tuple(v) if isinstance(v, list) else v for v in (a, b))
    return a == b and isinstance(a, bool) == isinstance(b, bool)


class SpecLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 numbers (exponents without a dot or a sign: 1e-3, 5e4) that refuses a
    mapping's repeated key and documents whose aliases expand beyond MAX_NODES nodes or refer to themselves."""

    def construct_document(self, node):
        _check_nodes(self, node)
        return super().construct_document(node)


# YAML 1.1 floats need a dot and a signed exponent (1.0e-3); these are the 1.2 spellings it reads as strings.
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|[-+]?\.[0-9_]+[eE][-+]?[0-9]+)$"),
    list("-+0123456789."),
)


def _check_nodes(loader: SpecLoader, root) -> None:
    """Walk the composed node graph once (an aliased node is visited once): refuse repeated keys, loops and a
    size beyond MAX_NODES when aliases are expanded, before construction could expand anything."""
    from yaml.constructor import ConstructorError

    sizes: dict[int, int | None] = {}

    def size(node) -> int:
        if id(node) in sizes:
            if sizes[id(node)] is None:
                raise ConstructorError(None, None, "an alias refers to a node that contains it (a loop)",
                                       node.start_mark)
            return sizes[id(node)]
        sizes[id(node)] = None  # in progress
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = loader.construct_object(key_node)
                    if key in seen:  # as a dict sees it: 1 and true are one key
                        raise ConstructorError(None, None, f"duplicate key {key!r} (each key may appear once in "
                                               "a mapping; the second would silently replace the first)",
                                               key_node.start_mark)
                    seen.add(key)
                total += size(key_node) + size(value_node)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        if total > MAX_NODES:
            raise ConstructorError(None, None, f"more than {MAX_NODES:,} values once aliases are expanded (an "
                                   "alias bomb?)", node.start_mark)
        sizes[id(node)] = total
        return total

    size(root)


def load_yaml(text: str):
    """Parse YAML text with `SpecLoader`."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error as one line: where (line, column) and what."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = f"{err.context} " if err.context else ""
        return f"{where}{context}{err.problem}"
    return " ".join(str(err).split())


def load_spec(source: str | Path) -> SweepSpec:
    """A preset name (demo, paper, smoke) or a path to a YAML spec."""
    text, origin = None, str(source)
    give = f"give a YAML spec file or a preset ({', '.join(PRESETS)})"
    if str(source) in PRESETS:
        text = resources.files("depthlab").joinpath("presets", f"{source}.yaml").read_text()
    else:
        path = Path(source)
        if not path.exists():
            if re.fullmatch(r"[A-Za-z_]\w*=.*", str(source)):  # FIELD=VALUE, as Hydra takes overrides
                raise DepthlabError(f"{source}: no such spec file; to give a field a value in every run, use "
                                    f"--set {source} (e.g. depthlab run demo --set {source})")
            raise DepthlabError(f"{path}: no such spec file; {give}")
        if path.is_dir():
            raise DepthlabError(f"{path}: is a directory, not a spec file; {give}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DepthlabError(f"{path}: not a text file (byte {err.start} is not UTF-8); {give}") from None
        except OSError as err:
            raise DepthlabError(f"{path}: cannot read it ({err.strerror}); {give}") from None
        if "\x00" in text:
            raise DepthlabError(f"{path}: a binary file (it holds NUL bytes), not a YAML spec; {give}")
    try:
        values = load_yaml(text)
    except yaml.YAMLError as err:
        raise DepthlabError(f"{origin}: not valid YAML: {yaml_problem(err)}") from None
    except RecursionError:
        raise DepthlabError(f"{origin}: not a usable spec: its YAML is nested too deeply") from None
    if values is None:
        raise DepthlabError(f"{origin}: empty spec file; expected a mapping with keys {', '.join(SPEC_KEYS)}")
    return SweepSpec.from_dict(values, origin=origin)
