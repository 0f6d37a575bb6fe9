"""The vocabulary every stage of the pipeline shares: run identity, run statuses, metric names, and records.

A *run* is a config (a flat dict of `depthlab.spec.config.RunConfig` fields) trained by one *recipe*: the
version of the training code (`depthlab.train.engine.RECIPE`). Two ids name it:

- `config_id(config)`: the sha256 of the canonical config's JSON (16 hex digits), the same under every recipe;
- `run_id(config, recipe)`: the sha256 of the canonical config AND the recipe. A change to the training code that
  alters what it produces bumps the recipe, so the same config trained again gets a new id and the old result
  stays in the store, told apart by its recipe (see `depthlab.results.store`).

The *canonical config* (`canonical_config`) is the config without the fields at their *neutral* value: a field
added after the first release declares, with its default (`added`), the value that reproduces what runs did
before it existed (`skip: true`, `prune: none`, ...). A config that holds such a field at that value and one that
predates the field are the same run, so adding a field renames no stored run and needs no store migration. The
run config declares its fields' neutral values here when it is defined (`declare_run_fields`): this module sits
below it and cannot import it.

A *record* (`RunRecord`) is what `Store.records()` returns for one run: a frozen record whose attributes are
the result fields (`record.status`, `record.val_loss`, `record.env`, ...), whose `config` is the run's config as
stored (read-only), and whose `extra` holds any extra final metrics (e.g. `geometric_complexity`, `erf50`). The
analyses read attributes; the one flat view, every config field beside the result fields as the CSV/JSON
columns show them, is `record.as_row()`. No result field ever has the name of a config field (the runs' epochs
are `epochs_run`; `epochs` is the config's planned number), so the flat view shadows nothing.
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


def canonical_json(value) -> str:
    """Sorted keys, no spaces, floats as repr (what `json` writes): the text an id hashes."""
    return _CANONICAL.encode(value)


def _item(o):
    if hasattr(o, "item"):  # numpy integers are not ints to json; numpy floats already are floats
        return o.item()
    raise TypeError(f"config value is not JSON-serialisable: {o!r}")


# what json.dumps(value, sort_keys=True, separators=(",", ":"), default=_item) makes for each call, made once (a
# comparison of 100,000 runs encodes 200,000 configs); an encoder keeps no state between calls
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_item)


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
    """Class decorator of the run config (`depthlab.spec.config.RunConfig`): its fields' neutral values are the
    ones that ids leave out."""
    global _declared
    _declared = MappingProxyType(neutral_values(cls))
    return cls


def neutral_defaults() -> Mapping:
    """{field: neutral value} of the run config's fields that have one."""
    if _declared is None:  # an id computed without them would not be the run's: refuse rather than guess
        raise RuntimeError("run ids need the run fields' neutral values: import depthlab.spec.config first")
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


def precision_of(env: Mapping) -> str | None:
    """The precision a run trained in ("fp32" or "bf16"; `depthlab.precision`), from its environment; runs of
    before it was a choice recorded `amp` ("bf16" or "off"); None when unknown (unfinished, or hand-made)."""
    env = env or {}
    if env.get("precision"):
        return env["precision"]
    return {"bf16": "bf16", "off": "fp32"}.get(env.get("amp"))


# -- records: one run as the store returns it --------------------------------------------------------------------

def _read_only(mapping) -> Mapping:
    """A read-only view of a copy: a record handed to several analyses cannot be changed by one of them."""
    return MappingProxyType(dict(mapping or {}))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One run: its config (read-only), its result fields and its extra final metrics. The store builds them
    (`Store.records`), tests build them by hand (`RunRecord.make`), and `dataclasses.replace` derives one from
    another (a shift measurement's record from its run's)."""

    run_id: str | None = None          # this run: config + recipe
    config_id: str | None = None       # the config alone: equal for the same config trained by different recipes
    recipe: int | None = None          # the training code's recipe version that produced the result
    sweep: str | None = None           # the sweep it was read for (`Store.records(sweep=...)`), else the first
    sweeps: tuple[str, ...] = ()       # every sweep that lists it, in the order they added it
    status: str | None = None          # one of STATUSES
    params: int | None = None          # free parameters of one model
    q: float | None = None             # determination ratio Q = K·M/P
    # final metrics (METRICS), eval mode, whole splits (None for a diverged run)
    train_loss: float | None = None
    val_loss: float | None = None
    train_acc: float | None = None
    val_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    epochs_run: int | None = None      # epochs recorded in the history (the config's `epochs` is the number planned)
    seconds: float | None = None       # wall time of the run's whole pack (training, evaluation, complexity)
    train_seconds: float | None = None  # the pack's time in training steps alone
    history: tuple[Mapping, ...] = dataclasses.field(default=(), repr=False)  # per-epoch metrics
    env: Mapping = dataclasses.field(default_factory=dict, repr=False)  # software, hardware, provenance (device, ...)
    error: str | None = None           # why it failed or diverged
    attempts: int | None = None        # how many times it was claimed
    config: Mapping = dataclasses.field(default_factory=dict)  # the config as stored
    extra: Mapping = dataclasses.field(default_factory=dict)   # extra final metrics (erf50, layer_density, ...)

    def __post_init__(self):
        # read-only copies, whatever the caller passed (lists, dicts): a frozen record is frozen one level down
        freeze = lambda name, value: object.__setattr__(self, name, value)
        freeze("config", _read_only(self.config))
        freeze("env", _read_only(self.env))
        freeze("extra", _read_only(self.extra))
        freeze("sweeps", tuple(self.sweeps or ()))
        freeze("history", tuple(_read_only(h) for h in self.history or ()))

    @classmethod
    def make(cls, config: Mapping | None = None, **values) -> "RunRecord":
        """A hand-made record: `values` named like a result field set it, any other name is an extra metric
        (`RunRecord.make({"topology": "parallel"}, status="done", val_loss=0.3, erf50=4.0)`)."""
        fields = {k: v for k, v in values.items() if k in _FIELD_NAMES}
        extra = {k: v for k, v in values.items() if k not in _FIELD_NAMES}
        return cls(config=config or {}, **fields, extra={**fields.pop("extra", {}), **extra})

    @classmethod
    def from_parsed(cls, values: dict) -> "RunRecord":
        """A record of `values` ({field: value}, every field), which a reader has just parsed (`Store.records`),
        without the copies `__post_init__` makes: `values` itself becomes the record's, and its "config", "extra"
        and "history" dicts are new ones that nothing else holds, so a read-only view of each (not of a copy)
        already keeps every analysis from changing them; "env" may be one read-only view shared by the runs whose
        environment is the same text (the runs of a pack), and "sweeps" one tuple. The record equals the one
        `RunRecord(**values)` makes (100,000 runs: the copies were a fifth of reading them)."""
        if values.keys() != _FIELD_NAMES:
            raise TypeError(f"a record needs every field: {', '.join(sorted(_FIELD_NAMES ^ values.keys()))}")
        env, extra, history = values["env"], values["extra"], values["history"]
        values["config"] = MappingProxyType(values["config"])  # (items set one by one: 100,000 records a read)
        values["extra"] = MappingProxyType(extra) if extra else _EMPTY
        if type(env) is not MappingProxyType:
            values["env"] = MappingProxyType(env)
        values["history"] = tuple(map(MappingProxyType, history)) if history else ()
        record = object.__new__(cls)
        object.__setattr__(record, "__dict__", values)  # frozen: set as __post_init__ sets fields
        return record

    @property
    def finished(self) -> bool:
        """Whether the run has ended, done or not (diverged, failed)."""
        return self.status in FINISHED

    @property
    def precision(self) -> str | None:
        """The precision it trained in (`precision_of`), None when unknown."""
        return precision_of(self.env)

    @property
    def pack_size(self) -> int | None:
        """How many models trained side by side in its pack, None when not recorded."""
        return self.env.get("pack_size")

    @property
    def pack_seconds(self) -> float | None:
        """This run's share of its pack's wall time: `seconds` / pack size. A pack's models share its time, so these
        shares add up to the packs' time, where adding `seconds` counts each pack once per model."""
        return None if self.seconds is None else self.seconds / (self.pack_size or 1)

    @property
    def pack_train_seconds(self) -> float | None:
        """This run's share of its pack's time in training steps (`train_seconds` / pack size)."""
        return None if self.train_seconds is None else self.train_seconds / (self.pack_size or 1)

    def metric(self, name: str):
        """A final metric by name: one of METRICS, else an extra one (None where the run has none)."""
        return getattr(self, name) if name in METRICS else self.extra.get(name)

    def as_row(self) -> dict:
        """The flat view the results columns and exports read: every config field, then the result fields,
        then the extra metrics that no config field or result field hides; plain, JSON-ready values."""
        row = dict(self.config)
        row.update((name, getattr(self, name)) for name in _RESULTS)
        row.update(sweeps=list(self.sweeps), history=[dict(h) for h in self.history], env=dict(self.env))
        for name, value in self.extra.items():
            row.setdefault(name, value)
        return row


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(RunRecord))
_EMPTY = MappingProxyType({})  # the extra metrics of a run without any: one empty view serves them all
_RESULTS = tuple(f.name for f in dataclasses.fields(RunRecord) if f.name not in ("config", "extra"))
# The result fields of a record (the flat row's keys besides the config's fields and extra metrics) and "config":
# no extra final metric may take one of these names (`Store.finish` refuses it).
RECORD_FIELDS = (*_RESULTS, "config")
