"""Sweep specs: YAML → validated list of `RunConfig`s.

A spec has a `name`, a `description`, `defaults` (fields every run shares), a `grid` (field → list of values:
the cartesian product) and optionally `runs`: a list of sub-grids, each merged over the grid (its keys replace
the grid's) — the way to express "BN rows here, Fixup rows there" in one spec. `exclude` drops the runs that
match any of its partial configs. Every run is validated before anything trains.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from depthlab.errors import DepthlabError, SpecError
from depthlab.sweep.config import RunConfig, field_names
from depthlab.sweep.store import run_id

SPEC_KEYS = ("name", "description", "defaults", "grid", "runs", "exclude")
PRESETS = ("demo", "paper", "smoke")


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
        spec = cls(name=str(values.get("name") or Path(origin).stem), description=values.get("description") or "",
                   defaults=values.get("defaults") or {}, grid=values.get("grid") or {},
                   runs=values.get("runs") or [], exclude=values.get("exclude") or [])
        _check_fields("defaults", spec.defaults)
        _check_fields("grid", spec.grid)
        for i, sub in enumerate(spec.runs):
            _check_fields(f"runs[{i}]", sub)
        for i, sub in enumerate(spec.exclude):
            _check_fields(f"exclude[{i}]", sub)
        return spec

    def configs(self) -> list[RunConfig]:
        """Every run of the sweep, validated, in a stable order, without duplicates."""
        subgrids = [{**self.grid, **sub} for sub in self.runs] or [self.grid]
        seen, out = set(), []
        for sub in subgrids:
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
                key = run_id(config.to_dict())
                if key not in seen:
                    seen.add(key)
                    out.append(config)
        return out

    def with_overrides(self, overrides: dict) -> "SweepSpec":
        """A copy in which each field of `overrides` takes the given value in every run: a scalar replaces the
        field in defaults, grid and runs alike; a list becomes the field's grid axis. The name records the
        overrides, so that the overridden sweep's runs are compared among themselves in a shared store."""
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
        return SweepSpec(name=f"{self.name}[{suffix}]", description=self.description, defaults=defaults,
                         grid=grid, runs=runs, exclude=list(self.exclude))

    def _excluded(self, values: dict) -> bool:
        return any(all(values.get(k) == v for k, v in ex.items()) for ex in self.exclude)


def parse_overrides(items: list[str]) -> dict:
    """["width=8", "blocks=[2, 4]"] -> {"width": 8, "blocks": [2, 4]}; values are read as YAML."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError("--set", item, "FIELD=VALUE, e.g. width=8 or blocks=[2,4]")
        key = key.strip()
        if key in out:
            raise SpecError(f"--set {key}", item, f"one --set per field ({key} is already {out[key]!r})")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SpecError(f"--set {key}", text, f"a YAML value ({err.problem})") from None
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 as a string
                value = float(value)
            except ValueError:
                pass
        if value == []:
            raise SpecError(f"--set {key}", text, "a value, or a non-empty list of values")
        out[key] = value
    return out


def _check_fields(where: str, values) -> None:
    if not isinstance(values, dict):
        raise SpecError(where, values, "a mapping of run fields to values")
    allowed = field_names()
    for key in values:
        if key not in allowed:
            raise SpecError(f"{where}.{key}", values[key], "a run field: " + ", ".join(allowed))


def _short(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def load_spec(source: str | Path) -> SweepSpec:
    """A preset name (demo, paper, smoke) or a path to a YAML spec."""
    text, origin = None, str(source)
    if str(source) in PRESETS:
        text = resources.files("depthlab").joinpath("presets", f"{source}.yaml").read_text()
    else:
        path = Path(source)
        if not path.exists():
            raise DepthlabError(f"{path}: no such spec file; give a YAML spec or a preset ({', '.join(PRESETS)})")
        text = path.read_text()
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DepthlabError(f"{origin}: not valid YAML: {err}") from None
    return SweepSpec.from_dict(values, origin=origin)
