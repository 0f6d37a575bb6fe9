"""The vocabulary every stage of the pipeline shares: run identity, run statuses, metric names, and records.

A *run* is a config (a flat dict of `depthlab.sweep.config.RunConfig` fields) trained by one *recipe*: the
version of the training code (`depthlab.sweep.engine.RECIPE`). Two ids name it:

- `config_id(config)`: the sha256 of the canonical config's JSON (16 hex digits), the same under every recipe;
- `run_id(config, recipe)`: the sha256 of the canonical config AND the recipe. A change to the training code that
  alters what it produces bumps the recipe, so the same config trained again gets a new id and the old result
  stays in the store, told apart by its recipe (see `depthlab.sweep.store`).

The *canonical config* (`canonical_config`) is the config without the fields at their *neutral* value: a field
added after the first release declares, with its default (`added`), the value that reproduces what runs did
before it existed (`skip: true`, `prune: none`, ...). A config that holds such a field at that value and one that
predates the field are the same run, so adding a field renames no stored run and needs no store migration. The
run config declares its fields' neutral values here when it is defined (`declare_run_fields`): this module sits
below it and cannot import it.

A *record* is what `Store.records()` returns for one run: a plain dict holding every config field at the top
level (so `rec["topology"]` works), the result fields of `RECORD_FIELDS`, any extra final metrics (e.g.
`geometric_complexity`), and the untouched config under "config". No result key ever has the name of a config
field (the runs' epochs are `epochs_run`; `epochs` is the config's planned number), so nothing is shadowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from types import MappingProxyType
from typing import Mapping

STATUSES = ("pending", "running", "done", "diverged", "failed")
FINISHED = ("done", "diverged", "failed")
METRICS = ("train_loss", "val_loss", "train_acc", "val_acc", "test_loss", "test_acc")

# The result keys of a record, besides the config's fields and extra final metrics.
RECORD_FIELDS = (
    "run_id",          # this run: config + recipe
    "config_id",       # the config alone: equal for the same config trained by different recipes
    "recipe",          # the training code's recipe version that produced the result
    "sweep",           # the sweep it was read for (with `Store.records(sweep=...)`), else the first to list it
    "sweeps",          # every sweep that lists it, in the order they added it
    "status",          # one of STATUSES
    "params", "q",     # free parameters of one model, determination ratio Q = K·M/P
    *METRICS,          # final metrics, eval mode, whole splits (None for a diverged run)
    "epochs_run",      # epochs recorded in the history (the config's `epochs` is the number planned)
    "seconds",         # wall time of the run's whole pack (training, evaluation, complexity)
    "train_seconds",   # the pack's time in training steps alone
    "history",         # per-epoch metrics
    "env",             # software, hardware and provenance (depthlab version, git commit, device, ...)
    "error",           # why it failed or diverged
    "attempts",        # how many times it was claimed
    "config",          # the config as stored
)


def canonical_json(value) -> str:
    """Sorted keys, no spaces, floats as repr (what `json` writes): the text an id hashes."""

    def default(o):
        if hasattr(o, "item"):  # numpy integers are not ints to json; numpy floats already are floats
            return o.item()
        raise TypeError(f"config value is not JSON-serialisable: {o!r}")

    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- identity: the canonical config --------------------------------------------------------------------------

NEUTRAL = "neutral"  # the dataclasses.field metadata key of a field's neutral value
_DEFAULT = object()


def added(default, *, neutral=_DEFAULT) -> dataclasses.Field:
    """A run field added after the first release, with its default and its neutral value: the one that
    reproduces what runs did before the field existed (the default, unless told otherwise)."""
    return dataclasses.field(default=default, metadata={NEUTRAL: default if neutral is _DEFAULT else neutral})


def neutral_values(cls) -> dict:
    """{field: neutral value} of a dataclass's fields declared with `added`."""
    return {f.name: f.metadata[NEUTRAL] for f in dataclasses.fields(cls) if NEUTRAL in f.metadata}


_declared: Mapping | None = None  # the run fields' neutral values, once the run config is defined


def declare_run_fields(cls):
    """Class decorator of the run config (`depthlab.sweep.config.RunConfig`): its fields' neutral values are the
    ones that ids leave out."""
    global _declared
    _declared = MappingProxyType(neutral_values(cls))
    return cls


def neutral_defaults() -> Mapping:
    """{field: neutral value} of the run config's fields that have one."""
    if _declared is None:  # an id computed without them would not be the run's: refuse rather than guess
        raise RuntimeError("run ids need the run fields' neutral values: import depthlab.sweep.config first")
    return _declared


def canonical_config(config: dict, neutral: Mapping | None = None) -> dict:
    """`config` without the fields at their neutral value (`neutral`, default the run config's): what ids hash,
    and what `compare` pairs runs on. Values are compared as their canonical JSON (1.0 is not 1, as in ids)."""
    neutral = neutral_defaults() if neutral is None else neutral
    return {k: v for k, v in config.items()
            if k not in neutral or canonical_json(v) != canonical_json(neutral[k])}


def config_id(config: dict, neutral: Mapping | None = None) -> str:
    """Stable id of a config, whatever recipe trains it: 16 hex digits of the sha256 of the canonical JSON of its
    canonical config (`neutral` as in `canonical_config`)."""
    return _digest(canonical_json(canonical_config(config, neutral)))


def run_id(config: dict, recipe: int, neutral: Mapping | None = None) -> str:
    """Stable id of a run: the canonical config trained by recipe `recipe`."""
    if isinstance(recipe, bool) or not isinstance(recipe, int) or recipe < 1:
        raise ValueError(f"recipe must be a positive integer, got {recipe!r}")
    return _digest(canonical_json({"config": canonical_config(config, neutral), "recipe": recipe}))


def finite(value):
    """A metric as a float, or None when missing, NaN or infinite (stored as NULL; strict JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def plain(obj):
    """A JSON-safe copy: non-finite floats become None (strict JSON has no NaN), numpy values become Python."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays, torch tensors
        return plain(obj.tolist())
    raise TypeError(f"not JSON-serialisable: {obj!r} ({type(obj).__name__})")


def dumps(obj) -> str:
    """Strict, compact JSON of `plain(obj)`."""
    return json.dumps(plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def precision_of(record: dict) -> str | None:
    """The precision a run trained in ("fp32" or "bf16"; `depthlab.precision`), from its environment; runs of
    before it was a choice recorded `amp` ("bf16" or "off"); None when unknown (unfinished, or hand-made)."""
    env = record.get("env") or {}
    if env.get("precision"):
        return env["precision"]
    return {"bf16": "bf16", "off": "fp32"}.get(env.get("amp"))


def config_of(record: dict) -> dict:
    """The config of a record from `Store.records` (or of a hand-made flat record without a "config" key)."""
    cfg = record.get("config")
    if isinstance(cfg, dict):
        return cfg
    return {k: v for k, v in record.items() if k not in RECORD_FIELDS}
