"""The honest comparison of two values of one config field, at everything else equal.

The field is the *contrast*: `topology` by default (deep sequential against shallow parallel at equal
parameters), or any other (`kernel`, `skip`, `norm`, ...). Two views:

- `band_table`: the reference study's table: mean final losses of finished runs per dataset × contrast value ×
  band of the determination ratio Q = K·M/P (training examples × outputs / free parameters).
- `paired`: runs whose configs are identical except the contrast field form a pair; for two of its values a
  and b the per-pair difference d = b − a removes everything the two runs share (depth, width, seed, ...). For
  each group we give the mean and median d, a seeded percentile-bootstrap CI of the mean (over N_BOOTSTRAP_MAX
  pairs, its normal approximation), win counts, and a TOST equivalence test, and from those one verdict. A mean
  alone would hide whether a difference is consistent, and "no significant difference" is not "equivalent":
  that takes TOST against a stated margin.
  When d is both within the margin and consistently of one sign, the verdict says both.

Pairs with a diverged or failed member cannot give a loss difference; they are left out of the statistics but
counted per value, since a value that diverges more often would otherwise look better than it is.

Fields added later: a record stored before a field existed pairs with one that holds the field at its neutral
value, as their run ids say (`depthlab.records.canonical_config`).

Recipes: a run is a config trained by a recipe (`depthlab.records`). Of a config trained by several recipes
only the newest counts (the older runs are superseded and counted); a pair whose two runs were trained by
different recipes is not formed unless asked (`allow_mixed_recipes`), and `compare_report` refuses such a mix.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
import os
import shlex
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from operator import itemgetter
from statistics import NormalDist
from typing import Mapping

import numpy as np

from depthlab.data import registry
from depthlab.errors import DepthlabError, SpecError
from depthlab.records import METRICS, STATUSES, RunRecord, canonical_config, canonical_json, finite
from depthlab.results.export import varied_fields

Q_BANDS = [(0.0, 1.0), (1.0, 3.0), (3.0, 10.0), (10.0, math.inf)]
BAND_LABELS = [f"[{lo:g},{hi:g})" for lo, hi in Q_BANDS]  # "[0,1)", "[1,3)", "[3,10)", "[10,inf)"
NO_BAND = "n/a"  # a run without q
ALL = "all"
DEFAULT_CONTRAST = "topology"
TOPOLOGIES = ("sequential", "parallel")
DEFAULT_METRICS = ("val_loss", "train_loss", "val_acc")
RELATIVE_MARGIN = 0.05  # default margin for losses: 5% of the pooled mean
ACCURACY_MARGIN = 0.01  # default margin for accuracies: one percentage point
BAND_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")
BLOWN_UP = 10  # a final training loss above BLOWN_UP × chance level is a blown-up run, not a result
# a final training loss above NOT_LEARNED × chance level (within 10% of a uniform guess) is a run that learned
# nothing yet: one epoch leaves every wiring there, and comparing such runs says nothing about the wirings
NOT_LEARNED = 0.9
MIN_PAIRS = 3  # fewer pairs give no CI or t-test worth printing


def q_band(q) -> str:
    """The label of the Q band holding q (bands are closed below, open above: q = 1 is in "[1,3)")."""
    if q is None or math.isnan(float(q)):
        return NO_BAND
    q = float(q)
    if q < 0:
        raise ValueError(f"q must be >= 0, got {q}")
    return BAND_LABELS[bisect.bisect_right(_BAND_STARTS, q) - 1]  # the bands follow each other: the last start <= q


_BAND_STARTS = [lo for lo, _ in Q_BANDS]


def _band_order(label: str) -> int:
    return BAND_LABELS.index(label) if label in BAND_LABELS else len(BAND_LABELS)


def _topology_order(topology: str):
    if topology in TOPOLOGIES:
        return (TOPOLOGIES.index(topology), 0, "")
    if topology.startswith("groups:") and topology[7:].isdigit():
        return (2, int(topology[7:]), "")
    return (3, 0, topology)


def value_order(value):
    """A sort key for config values of mixed types: numbers by value, then strings, then anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (2, 0.0, json.dumps(value, sort_keys=True, default=str))


def contrast_fields(contrast: str) -> list[str]:
    """The config fields a contrast varies: one (`kernel`), or several joined by '+' (`branch+kernel`) when the
    treatment changes them together (a large-kernel branch against a 3×3 one)."""
    return [f.strip() for f in contrast.split("+") if f.strip()]


def contrast_order(field: str, value):
    """The order of a contrast's values: for topology sequential, parallel, then groups:g by g; else
    `value_order` (field by field for a compound contrast). The first of two values is a, the second b, and
    d = b − a."""
    fields = contrast_fields(field)
    if len(fields) > 1 and isinstance(value, list):
        return (2, tuple(contrast_order(f, v) for f, v in zip(fields, value)))
    if field == "topology" and isinstance(value, str):
        return (0, _topology_order(value))
    return (1, value_order(value))


def value_label(field: str, value) -> str:
    """How a contrast value is named in verdicts and headers: a topology by its name, any other value as
    field=value (e.g. kernel=5, skip=false; branch=lk,kernel=13 for a compound contrast)."""
    fields = contrast_fields(field)
    if len(fields) > 1 and isinstance(value, list):
        return ",".join(value_label(f, v) for f, v in zip(fields, value))
    if field == "topology":
        return str(value)
    return f"{field}={json.dumps(value) if not isinstance(value, str) else value}"


def _neutral_for(records: list[RunRecord]) -> dict:
    """The run fields' neutral values where the records need them: when some record lacks a field that another
    holds (stored before the field existed). Records that hold the same fields pair alike with or without them,
    and the declaration (depthlab.spec.config) imports torch, which a comparison otherwise does without."""
    return _once(("neutral",), records, lambda: _neutral_values(records))


def _neutral_values(records: list[RunRecord]) -> dict:
    fields = records[0].config.keys() if records else None
    if all(r.config.keys() == fields for r in records):
        return {}
    from depthlab.spec.config import neutral

    return dict(neutral())


def _field_value(rec: RunRecord, field: str, neutral: dict | None = None):
    """The record's value of `field` (a list for a compound contrast); a field it predates has its neutral value."""
    cfg, neutral = rec.config, neutral or {}
    fields = _fields_of(field)
    if len(fields) > 1:
        return [cfg.get(f, neutral.get(f)) for f in fields]
    return cfg.get(field, neutral.get(field))


@functools.lru_cache(maxsize=256)
def _fields_of(contrast: str) -> tuple[str, ...]:
    return tuple(contrast_fields(contrast))


# -- what a comparison computes once ----------------------------------------------------------------------------
#
# A report asks for the same things many times: the newest recipes, the contrast's values and the pairs, once
# per metric and two values, each encoding every record's config again. With 100,000 runs that repetition was
# most of a comparison; within `_remembering()` (a `compare_report` or a `paired`) each is computed once. A result
# is remembered by the identity of the list of records it was computed from, which is kept alive beside it so
# that its id cannot be reused meanwhile (the records are frozen, and nothing changes the lists).

_SEEN: ContextVar[dict | None] = ContextVar("depthlab_compare_seen", default=None)


@contextmanager
def _remembering():
    if _SEEN.get() is not None:  # an enclosing comparison remembers already
        yield
        return
    token = _SEEN.set({})
    try:
        yield
    finally:
        _SEEN.reset(token)


def _once(what: tuple, source, compute):
    """`compute()`, remembered for `source` and `what` within `_remembering()` (else computed each time)."""
    seen = _SEEN.get()
    if seen is None:
        return compute()
    key = (what, id(source))
    hit = seen.get(key)
    if hit is None or hit[0] is not source:
        hit = seen[key] = (source, compute())
    return hit[1]


def _value_text(value) -> str:
    """`canonical_json` of a config value; the usual ones (names, sizes, flags) from a cache."""
    return _plain_text(value) if type(value) in (str, int, bool, type(None)) else canonical_json(value)


@functools.lru_cache(maxsize=1024, typed=True)  # typed: 1 and True are different values (and texts)
def _plain_text(value) -> str:
    return canonical_json(value)


def pairing_key(cfg: Mapping, contrast: str, neutral: dict | None = None) -> str:
    """What two runs of a pair share: their canonical configs (`neutral`: see `_neutral_for`) without the
    contrast's fields and, for runs sized by a parameter budget, without the size the budget chose (hidden or width
    follow from the other fields)."""
    drop = set(_fields_of(contrast))
    if cfg.get("param_budget") is not None:
        drop.add(cfg.get("budget_by") or "hidden")
    shared = canonical_config(cfg, neutral) if neutral else dict(cfg)  # without `neutral`: the config itself
    for field in drop:
        shared.pop(field, None)
    return canonical_json(shared)


def _pairing_keys(records: list[RunRecord], contrast: str) -> list[str]:
    """`pairing_key` of each record, remembered. Where every record holds the same fields (a store's usual case:
    `_neutral_for` is empty) a run without a parameter budget drops only the contrast's fields, so its key can be
    the JSON array of its other values in sorted-field order: equal exactly when those dicts' JSON is equal, and
    never equal to a dict's JSON, which the other records keep (100,000 runs: 0.35 s against 0.9 s)."""
    def compute():
        neutral = _neutral_for(records)
        if neutral or not records:
            return [pairing_key(rec.config, contrast, neutral) for rec in records]
        drop = set(_fields_of(contrast))
        kept = sorted(k for k in records[0].config if k not in drop)
        values = itemgetter(*kept) if len(kept) > 1 else lambda cfg: [cfg[k] for k in kept]
        return [canonical_json(values(cfg)) if cfg.get("param_budget") is None else pairing_key(cfg, contrast)
                for cfg in (rec.config for rec in records)]

    return _once(("pairing keys", contrast), records, compute)


def contrast_values(records: list[RunRecord], field: str) -> list:
    """The distinct values of `field` in the records' configs, in contrast order."""
    return list(_once(("values", field), records, lambda: _contrast_values(records, field)))


def _contrast_values(records: list[RunRecord], field: str) -> list:
    seen = {}
    for value, text in _values_of(records, field):
        seen.setdefault(text, value)
    return sorted(seen.values(), key=lambda v: contrast_order(field, v))


def _values_of(records: list[RunRecord], field: str) -> list[tuple]:
    """(value, its `_value_text`) of `field` in each record (`_field_value`), in record order; remembered."""
    def compute():
        neutral = _neutral_for(records)
        if len(_fields_of(field)) == 1 and not neutral:  # the value itself (`_field_value`), read at once
            values = [rec.config.get(field) for rec in records]
        else:
            values = [_field_value(rec, field, neutral) for rec in records]
        return [(value, _value_text(value)) for value in values]

    return _once(("field values", field), records, compute)


def first_two_values(records: list[RunRecord], contrast: str) -> tuple:
    """The default a and b of a contrast: its first two values in contrast order (sequential and parallel for
    topology); None where there are fewer."""
    values = contrast_values(records, contrast) + [None, None]
    return values[0], values[1]


def mean_or_none(values):
    """The mean of a list (or array) of floats, None for an empty one."""
    return float(np.mean(values)) if len(values) else None


def std_or_none(values):
    """The sample standard deviation (ddof 1), None for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def band_table(records: list[RunRecord], contrast: str = DEFAULT_CONTRAST) -> list[dict]:
    """Mean (and std) final train/val loss and mean train/val accuracy of the 'done' runs per dataset ×
    contrast value × Q band (the value under "value", and under the field's own name). Means are over the
    runs that have the metric."""
    groups: dict[tuple, list[RunRecord]] = {}
    values: dict[str, object] = {}
    for rec, (value, text) in zip(records, _values_of(records, contrast)):
        if rec.status == "done":
            values[text] = value
            key = (str(rec.config.get("dataset")), text, q_band(rec.q))
            groups.setdefault(key, []).append(rec)
    rows = []
    order = lambda k: (k[0], contrast_order(contrast, values[k[1]]), _band_order(k[2]))
    for key in sorted(groups, key=order):
        value = values[key[1]]
        row = {"dataset": key[0], contrast: value, "value": value, "q_band": key[2], "n": len(groups[key])}
        for m in BAND_METRICS:
            found = _finite_values([getattr(r, m) for r in groups[key]])  # m: a field
            row[f"{m}_mean"] = mean_or_none(found)
            if m.endswith("_loss"):
                row[f"{m}_std"] = std_or_none(found)
        rows.append(row)
    return rows


def _finite_values(values: list) -> np.ndarray:
    """The finite ones of `values` (floats or None), as an array: what `finite` keeps, in order, at once."""
    array = np.array(values, dtype=float)  # None becomes NaN
    return array[np.isfinite(array)]


def blown_up(record: RunRecord) -> bool:
    """A run that finished ('done') with a final training loss far above chance level (BLOWN_UP × ln(classes)):
    its weights blew up without a NaN (e.g. Adam at a huge learning rate), so its metrics mean nothing and it is
    left out of the pairing like a diverged run."""
    return _loss_over(record, BLOWN_UP)


def not_learned(record: RunRecord) -> bool:
    """A run that finished ('done') with a final training loss still near chance level (above NOT_LEARNED ×
    ln(classes)): it learned nothing, so it is left out of the pairing like a diverged run, and counted."""
    return _loss_over(record, NOT_LEARNED)


def _loss_over(record: RunRecord, times_chance: float) -> bool:
    loss, chance = _loss_and_chance(record)
    return chance is not None and loss > times_chance * chance


def _loss_and_chance(record: RunRecord) -> tuple:
    """(final training loss, the dataset's chance-level loss) of a done run; (None, None) where either is missing
    (a dataset the registry does not know, e.g. a hand-made record's, has no chance level to compare with)."""
    loss = finite(record.train_loss)
    known = registry.REGISTRY.get(record.config.get("dataset"))
    if record.status != "done" or loss is None or known is None:
        return None, None
    return loss, known.chance_loss


def run_state(record: RunRecord) -> str:
    """A run's status as the pairing sees it: "blown_up" and "not_learned" are done runs that mean nothing
    (`blown_up`, `not_learned`: one look at the loss and the chance level for both)."""
    loss, chance = _loss_and_chance(record)
    if chance is None:
        return record.status
    return "blown_up" if loss > BLOWN_UP * chance else "not_learned" if loss > NOT_LEARNED * chance else "done"


def latest_recipes(records: list[RunRecord]) -> tuple[list[RunRecord], int]:
    """The records without those superseded by a newer recipe of the same config (a record without a recipe,
    e.g. a hand-made one, is its own), and how many were superseded."""
    return _once(("latest",), records, lambda: _latest_recipes(records))


def _latest_recipes(records: list[RunRecord]) -> tuple[list[RunRecord], int]:
    if len({r.recipe for r in records} - {None}) < 2:  # one recipe (a store's usual case): none is newer
        return records, 0
    newest: dict[str, int] = {}
    neutral = _neutral_for(records)
    keys = [canonical_json(canonical_config(rec.config, neutral)) for rec in records]
    for rec, k in zip(records, keys):
        if rec.recipe is not None:
            newest[k] = max(newest.get(k, rec.recipe), rec.recipe)
    kept = [r for r, k in zip(records, keys) if r.recipe is None or r.recipe == newest[k]]
    if len(kept) == len(records):  # the same list: what is remembered for it serves both
        return records, 0
    return kept, len(records) - len(kept)


def pair_records(records: list[RunRecord], contrast: str = DEFAULT_CONTRAST, a=None, b=None, *,
                 allow_mixed_recipes: bool = False) -> tuple[list[tuple[RunRecord, RunRecord]], dict]:
    """(a, b) pairs of records whose configs are identical except `contrast` (a and b: two of its values;
    default: the first two in contrast order, sequential and parallel for topology), in record order, and
    {"n_unpaired", "n_duplicate", "n_identical", "n_superseded", "n_mixed_recipes", "n_mixed_precisions"}: runs
    without a partner; runs skipped because their key held more than one run of a value (no one-to-one pairing
    is then justified); runs of one-block topology pairs, left out because with one block every wiring is the
    same network; runs superseded by a newer recipe of their config; pairs not formed (or, when allowed, formed)
    although their runs were trained by different recipes; pairs formed whose runs were trained in different
    precisions (`depthlab.precision`: the same run, computed differently; counted, not refused). Records of
    other values are ignored."""
    key = ("pairs", contrast, canonical_json(a), canonical_json(b), allow_mixed_recipes)
    return _once(key, records, lambda: _pair_records(records, contrast, a, b, allow_mixed_recipes))


def _pair_records(records, contrast, a, b, allow_mixed_recipes):
    records, superseded = latest_recipes(records)
    if a is None and b is None:
        a, b = first_two_values(records, contrast)
    key_a, key_b = canonical_json(a), canonical_json(b)
    buckets: dict[str, dict[str, list]] = {}
    for rec, (_, value), key in zip(records, _values_of(records, contrast), _pairing_keys(records, contrast)):
        if value in (key_a, key_b):
            bucket = buckets.get(key)
            if bucket is None:  # (not setdefault: it would make a bucket for every run)
                bucket = buckets[key] = {key_a: [], key_b: []}
            bucket[value].append(rec)
    pairs, unpaired, duplicate, identical, mixed, mixed_precisions = [], 0, 0, 0, 0, 0
    for bucket in buckets.values():
        left, right = bucket[key_a], bucket[key_b]
        if len(left) == 1 and len(right) == 1:
            if contrast == "topology" and left[0].config.get("blocks") == 1:
                identical += 2  # one block: both wirings are the same network, d = 0 says nothing
                continue
            if left[0].recipe != right[0].recipe:
                mixed += 1
                if not allow_mixed_recipes:
                    continue
            precisions = {left[0].precision, right[0].precision} - {None}
            mixed_precisions += len(precisions) > 1
            pairs.append((left[0], right[0]))
        elif len(left) > 1 or len(right) > 1:
            duplicate += len(left) + len(right)
        else:
            unpaired += len(left) + len(right)
    return pairs, {"n_unpaired": unpaired, "n_duplicate": duplicate, "n_identical": identical,
                   "n_superseded": superseded, "n_mixed_recipes": mixed, "n_mixed_precisions": mixed_precisions}


def bootstrap_ci(d, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap (1 - alpha) CI of the mean of d; resampled in chunks to bound memory."""
    return bootstrap_cis([d], alpha, n_boot, seed)[0]


def bootstrap_cis(samples: list, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> list[tuple]:
    """`bootstrap_ci` of each of `samples`, the same numbers. The resampling indices depend only on the seed and
    a sample's size, so samples of one size (a group's pairs under several metrics) share one draw of them, which
    is most of the work (100,000 runs, three metrics: a third of the draws)."""
    samples = [np.asarray(d, dtype=float) for d in samples]
    cis: list = [None] * len(samples)
    for n in dict.fromkeys(len(d) for d in samples):
        same = [k for k, d in enumerate(samples) if len(d) == n]
        rng = np.random.default_rng(seed)
        means = np.empty((len(same), n_boot))
        chunk = max(1, 2_000_000 // n)
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            # drawn as int32 (the same draws as int64: numpy draws any range below 2**32 as 32-bit, and faster), then
            # made the index type once: indexing converts other index types, once per sample it indexes
            drawn = rng.integers(0, n, size=(stop - start, n), dtype=np.int32).astype(np.intp)
            for row, k in enumerate(same):
                means[row, start:stop] = samples[k][drawn].mean(axis=1)
        for row, k in enumerate(same):
            lo, hi = np.percentile(means[row], [100 * alpha / 2, 100 * (1 - alpha / 2)])
            cis[k] = (float(lo), float(hi))
    return cis


# Groups of more pairs than this take the normal approximation of the bootstrap distribution of the mean instead
# of resampling it: the percentile bootstrap converges to it (central limit theorem; Berry-Esseen bounds the error
# by O(skewness / sqrt(n))), and from n = 5,000 on the two differ by less than the bootstrap's own Monte Carlo
# error at 10,000 resamples, while resampling costs n x 10,000 draws (100,000 runs: most of a comparison).
N_BOOTSTRAP_MAX = 5_000


def mean_ci(d, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> tuple[float, float, str]:
    """(low, high, method) of a (1 - alpha) CI of the mean of d: the percentile bootstrap (`bootstrap_ci`,
    method "bootstrap") up to N_BOOTSTRAP_MAX values, else its normal approximation (`normal_ci`, "normal")."""
    return mean_cis([d], alpha, n_boot, seed)[0]


def mean_cis(samples: list, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> list[tuple]:
    """`mean_ci` of each of `samples`, the bootstraps of one size drawn once (`bootstrap_cis`)."""
    small = [k for k, d in enumerate(samples) if len(d) <= N_BOOTSTRAP_MAX]
    resampled = dict(zip(small, bootstrap_cis([samples[k] for k in small], alpha, n_boot, seed)))
    return [(*resampled[k], "bootstrap") if k in resampled else (*normal_ci(d, alpha), "normal")
            for k, d in enumerate(samples)]


def normal_ci(d, alpha: float = 0.05) -> tuple[float, float]:
    """mean ± z_{1-alpha/2}·sd₀/√n: the normal law the bootstrap distribution of the mean tends to, sd₀ being
    the sample's standard deviation with ddof 0 (a resample's variance is the sample's own; Efron & Tibshirani,
    An Introduction to the Bootstrap, 1993, ch. 5 and 13)."""
    d = np.asarray(d, dtype=float)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    half = z * float(d.std(ddof=0)) / math.sqrt(len(d))
    mean = float(d.mean())
    return mean - half, mean + half


def tost_p(d, margin: float) -> float:
    """Two one-sided t-tests of the mean of d against -margin and +margin; the p-value is the larger one.
    p < alpha means the mean difference lies within ±margin (equivalence)."""
    d = np.asarray(d, dtype=float)
    # scipy.special's Student t CDF, not scipy.stats: the same function, a quarter of the import time (0.15 s
    # against 0.56 s), which `depthlab run` pays before its comparison; and only here: `status` pays nothing
    from scipy.special import stdtr

    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
    if sd == 0:  # no spread: the mean is exact
        return 0.0 if abs(mean) < margin else 1.0
    se = sd / math.sqrt(n)
    p_lower = stdtr(n - 1, -(mean + margin) / se)  # H0: mean <= -margin (the upper tail at (mean + margin)/se)
    p_upper = stdtr(n - 1, (mean - margin) / se)  # H0: mean >= +margin
    return float(max(p_lower, p_upper))


def paired_stats(d, margin, *, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0,
                 higher_is_better: bool = False, labels=("a", "b"), ci: tuple | None = None) -> dict:
    """Statistics and verdict for the paired differences d = b − a of one group (`labels`: the names of a and
    b in the verdict). `favours` is "a", "b" or None: which value the CI says is consistently better;
    `equivalent`: whether TOST puts the mean d within ±margin. Both may hold (a small but consistent
    difference), and then the verdict says both. `ci`: `mean_ci` of d when already computed (with other
    samples, `mean_cis`)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    out = dict(n_pairs=n, mean=None, median=None, ci_low=None, ci_high=None, ci_method=None, wins_a=0, wins_b=0,
               ties=0, tost_p=None, equivalent=False, favours=None, verdict="inconclusive")
    if n == 0:
        return out
    lower, higher = int((d < 0).sum()), int((d > 0).sum())
    out.update(mean=float(d.mean()), median=float(np.median(d)), ties=n - lower - higher,
               wins_b=higher if higher_is_better else lower, wins_a=lower if higher_is_better else higher)
    if n < MIN_PAIRS:
        return out
    lo, hi, method = ci or mean_ci(d, alpha, n_boot, seed)
    out.update(ci_low=lo, ci_high=hi, ci_method=method)
    if margin is not None and margin > 0:
        out["tost_p"] = tost_p(d, margin)
    if hi < 0:
        out["favours"] = "a" if higher_is_better else "b"
    elif lo > 0:
        out["favours"] = "b" if higher_is_better else "a"
    out["equivalent"] = out["tost_p"] is not None and out["tost_p"] < alpha
    better = None if out["favours"] is None else labels[0 if out["favours"] == "a" else 1]
    if out["equivalent"] and better:
        out["verdict"] = f"equivalent within ±{margin:g}; {better} consistently better by {abs(out['mean']):.2g}"
    elif out["equivalent"]:
        out["verdict"] = f"equivalent within ±{margin:g}"
    elif better:
        out["verdict"] = f"{better} better"
    return out


def _validate(metric, margin, alpha, n_boot):
    if metric not in METRICS:
        raise SpecError("metric", metric, ", ".join(METRICS))
    if margin is not None and not (isinstance(margin, (int, float)) and margin > 0 and math.isfinite(margin)):
        raise SpecError("margin", margin, "a positive number (absolute, in the metric's units)")
    if not 0 < alpha < 1:
        raise SpecError("alpha", alpha, "a number between 0 and 1")
    if not (isinstance(n_boot, int) and 1 <= n_boot <= MAX_BOOT):
        raise SpecError("n_boot", n_boot, f"an integer from 1 to {MAX_BOOT}")


MAX_BOOT = 1_000_000


def check_contrast(records: list[RunRecord], contrast: str) -> list:
    """`contrast` must name config fields that vary across the records (one, or several joined by '+');
    returns its values in order."""
    allowed = varied_fields(records)
    fields = contrast_fields(contrast)
    if not fields or any(f not in allowed for f in fields):
        raise SpecError("contrast", contrast, (", ".join(allowed) + " (or several joined by '+', e.g. "
                                               "branch+kernel)") if allowed else "none (no config field varies)")
    return contrast_values(records, contrast)


def check_by(records: list[RunRecord], by: str, contrast: str = DEFAULT_CONTRAST) -> None:
    """`by` must be a config field that varies across the records (and not the contrast itself)."""
    allowed = [f for f in varied_fields(records) if f not in contrast_fields(contrast)]
    if by not in allowed:
        raise SpecError("by", by, ", ".join(allowed) or f"none (no config field varies besides {contrast})")


def paired(records: list[RunRecord], metric: str = "val_loss", margin: float | None = None, by: str | None = None,
           alpha: float = 0.05, n_boot: int = 10000, seed: int = 0, *, contrast: str = DEFAULT_CONTRAST,
           a=None, b=None, allow_mixed_recipes: bool = False) -> dict:
    """Paired comparison of `metric` between values a and b of `contrast` (default: its first two values,
    sequential and parallel for topology), d = b − a, per dataset, per dataset × Q band, and (with `by`) per
    value of that config field within each. See the module docstring; every number is in the returned dict."""
    with _remembering():
        return _paired(records, [metric], margin, by, alpha, n_boot, seed, contrast, a, b, allow_mixed_recipes)[0]


def _paired(records, metrics, margin, by, alpha, n_boot, seed, contrast, a, b, allow_mixed_recipes) -> list[dict]:
    """`paired` of each of `metrics`, for one two values: one pairing, and each group's bootstrap shared by the
    metrics (`_group_rows`)."""
    for metric in metrics:
        _validate(metric, margin, alpha, n_boot)
    if by is not None:
        check_by(records, by, contrast)
    if a is None and b is None:
        a, b = first_two_values(latest_recipes(records)[0], contrast)
    pairs, info = pair_records(records, contrast, a, b, allow_mixed_recipes=allow_mixed_recipes)
    labels = (value_label(contrast, a), value_label(contrast, b))
    states = _once(("states",), records, lambda: {id(r): run_state(r) for r in records})  # for every metric
    places = _once(("places", by), pairs, lambda: [_pair_place(left, right, by, states) for left, right in pairs])
    slices = _once(("slices", by), pairs, lambda: list(_slices(places, by)))
    items = [_pair_items(pairs, places, metric) for metric in metrics]
    stats = [dict(alpha=alpha, n_boot=n_boot, seed=seed, higher_is_better=metric.endswith("_acc"), labels=labels)
             for metric in metrics]
    groups = _group_rows(slices, places, items, margin, stats)
    everything = range(len(pairs))
    return [_json_safe(dict(
        metric=metric, contrast=contrast, a=a, b=b, a_label=labels[0], b_label=labels[1],
        difference=f"{labels[1]} - {labels[0]}", higher_is_better=st["higher_is_better"],
        alpha=alpha, ci_level=1 - alpha, n_boot=n_boot, seed=seed, margin=margin,
        margin_rule=_margin_rule(margin, st["higher_is_better"]), by=by, allow_mixed_recipes=allow_mixed_recipes,
        pairs=dict(n_found=len(its), n_pairs=sum(state == "used" for _, state in its),
                   **_tally(everything, places, its, labels), **info),
        groups=rows,
    )) for metric, its, st, rows in zip(metrics, items, stats, groups)]


def _margin_rule(margin: float | None, higher_is_better: bool) -> str:
    """How the equivalence margin is chosen, as the report states it."""
    if margin is not None:
        return f"absolute {margin:g} (given)"
    if higher_is_better:
        return f"absolute {ACCURACY_MARGIN:g} (accuracy default)"
    return f"relative {RELATIVE_MARGIN:.0%} of mean (per group: {RELATIVE_MARGIN:g} x pooled mean)"


def _pair_place(left: RunRecord, right: RunRecord, by: str | None, states: dict) -> dict:
    """What a pair is whatever the metric: where it falls (dataset, Q band, `by` value) and its runs' statuses (a
    blown-up or unlearned run counts as its own status, `run_state`; `states`: {id(record): its `run_state`})."""
    cfg = left.config
    statuses = (states[id(left)], states[id(right)])
    # whatever the metric, a pair with a run that diverged, failed, blew up or did not learn is excluded, and one
    # with a run not done is unfinished
    state = ("excluded" if any(s in ("diverged", "failed", "blown_up", "not_learned") for s in statuses)
             else "unfinished" if statuses != ("done", "done") else None)
    # both runs share the dataset; Q is the left run's (equal across a topology pair, not across kernels)
    return dict(dataset=str(cfg.get("dataset")), band=q_band(left.q),
                by=canonical_json(cfg.get(by)) if by else None, by_value=cfg.get(by) if by else None,
                statuses=statuses, state=state)


def _pair_items(pairs: list[tuple], places: list[dict], metric: str) -> list[tuple]:
    """Each pair as the statistics of `metric` see it: (its runs' values, its state): "used", or why it is not
    ("excluded": a run diverged, failed, blew up or did not learn; "unfinished"; "missing": no value of the
    metric). Its place, whatever the metric, is `places`' (`_pair_place`)."""
    items = []
    for (left, right), place in zip(pairs, places):
        values = (finite(left.metric(metric)), finite(right.metric(metric)))
        items.append((values, place["state"] or ("missing" if None in values else "used")))
    return items


def _slices(places: list[dict], by: str | None):
    """(row labels, the indexes of its pairs, in order) of each group a comparison reports: per dataset, its pairs
    in all and per Q band, each also per value of the `by` field when given; groups without pairs are left out."""
    for dataset in sorted({p["dataset"] for p in places}):
        in_dataset = [i for i, p in enumerate(places) if p["dataset"] == dataset]
        bands = [ALL] + sorted({places[i]["band"] for i in in_dataset}, key=_band_order)
        by_values = [(ALL, ALL)] + (_by_values([places[i] for i in in_dataset]) if by else [])
        for band in bands:
            for key, value in by_values:
                sel = [i for i in in_dataset if band in (ALL, places[i]["band"]) and key in (ALL, places[i]["by"])]
                if sel:
                    yield dict(dataset=dataset, q_band=band, **({"by_value": value} if by else {})), sel


def _by_values(places: list[dict]) -> list[tuple]:
    """(key, value) of each `by` value among the pairs, in value order."""
    values = {p["by"]: p["by_value"] for p in places}
    return [(k, values[k]) for k in sorted(values, key=lambda k: value_order(values[k]))]


def _group_row(sel: list[int], row_labels: dict, places: list[dict], items: list[tuple], margin: float | None,
               d: list, stats: dict, ci) -> dict:
    """The statistics of one group's pairs `sel` (indexes of `places` and `items`, one metric's) (`stats`:
    `paired_stats`' settings; `d`: the used pairs' differences, `ci`: their `mean_ci`), its margin and its tally."""
    row = {**row_labels, **paired_stats(d, margin, **stats, ci=ci), "margin": margin,
           **_tally(sel, places, items, stats["labels"])}
    unlearned = sum("not_learned" in places[i]["statuses"] for i in sel)
    if len(d) < MIN_PAIRS and unlearned:  # say why there is no verdict: the models, not the statistics
        row["verdict"] = (f"not learned: {unlearned} of {len(sel)} pairs hold a run near chance level; "
                          "train longer")
    return row


def _group_rows_of(labels: dict, sel: list[int], places: list[dict], items: list[list], margin: float | None,
                   stats: list[dict]) -> list[dict]:
    """The row of one group (`sel`: its pairs) under each metric (`items`, `stats`: each metric's): the metrics'
    differences resampled together, so that those of one size share the draws."""
    used = [[i for i in sel if its[i][1] == "used"] for its in items]
    margins = [_group_margin([its[i][0] for i in u], margin, st["higher_is_better"])
               for u, its, st in zip(used, items, stats)]
    ds = [[its[i][0][1] - its[i][0][0] for i in u] for u, its in zip(used, items)]
    resampled = [k for k, d in enumerate(ds) if len(d) >= MIN_PAIRS]  # fewer get no CI (`paired_stats`)
    cis = dict(zip(resampled, mean_cis([ds[k] for k in resampled], stats[0]["alpha"], stats[0]["n_boot"],
                                       stats[0]["seed"])))
    return [_group_row(sel, labels, places, its, m, d, st, cis.get(k))
            for k, (its, m, d, st) in enumerate(zip(items, margins, ds, stats))]


def _group_rows(slices: list[tuple[dict, list]], places: list[dict], items: list[list], margin: float | None,
                stats: list[dict]) -> list[list[dict]]:
    """Each metric's group rows (`items[j]`: metric j's `_pair_items`, `stats[j]` its settings), in the order of
    `slices`; group k is computed for every metric at once (`_group_rows_of`). Each group's bootstrap is its own
    seeded stream, and numpy draws and averages without the GIL, so the groups are computed on several threads,
    the largest first: with 100,000 runs the resampling is most of a comparison."""
    at = lambda k: _group_rows_of(*slices[k], places, items, margin, stats)
    workers = min(len(slices), os.cpu_count() or 1)
    if workers < 2 or sum(len(sel) for _, sel in slices) < PARALLEL_PAIRS:
        rows = [at(k) for k in range(len(slices))]
    else:
        largest_first = sorted(range(len(slices)), key=lambda k: -len(slices[k][1]))
        with ThreadPoolExecutor(workers) as pool:
            futures = {k: pool.submit(at, k) for k in largest_first}
            rows = [futures[k].result() for k in range(len(slices))]
    return [[row[j] for row in rows] for j in range(len(items))]


PARALLEL_PAIRS = 2000  # fewer pairs in all a comparison's groups are resampled faster than threads start


def _group_margin(used: list[tuple], margin: float | None, higher_is_better: bool) -> float | None:
    """The margin TOST tests a group against: the one given, else the accuracy default, else RELATIVE_MARGIN of
    the pooled mean of the group's values (`used`: each used pair's two values; None without any)."""
    if margin is not None:
        return float(margin)
    if higher_is_better:
        return ACCURACY_MARGIN
    pooled = [v for values in used for v in values]
    # rounded to 3 significant digits, so the margin tested is the one printed
    return float(f"{RELATIVE_MARGIN * abs(float(np.mean(pooled))):.3g}") if pooled else None


def _tally(sel, places: list[dict], items: list[tuple], labels: tuple) -> dict:
    """How many of the pairs `sel` (indexes of `places` and of one metric's `items`) were left out and why:
    excluded ones per value and cause, unfinished, missing the metric."""
    states = Counter(items[i][1] for i in sel)
    excluded = [places[i]["statuses"] for i in sel if items[i][1] == "excluded"]
    per_value = lambda status: {t: sum(s[k] == status for s in excluded) for k, t in enumerate(labels)}
    return dict(
        n_excluded=len(excluded), diverged=per_value("diverged"), blown_up=per_value("blown_up"),
        not_learned=per_value("not_learned"),
        failed=per_value("failed"), n_unfinished=states["unfinished"], n_missing=states["missing"],
    )


def _json_safe(obj):
    """NaN/inf -> None and numpy -> Python, so the report is strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def check_recipes(records: list[RunRecord], contrast: str = DEFAULT_CONTRAST) -> dict:
    """{"recipes": the recipes of the runs compared, "n_superseded", "n_mixed_recipes"}; raises when some pairs
    of the contrast would mix recipes (a result of other training code is not the same run)."""
    kept, superseded = latest_recipes(records)
    values = contrast_values(kept, contrast)
    mixed = 0
    for i, a in enumerate(values):
        for b in values[i + 1:]:
            mixed += pair_records(kept, contrast, a, b)[1]["n_mixed_recipes"]
    recipes = sorted({r.recipe for r in kept if r.recipe is not None})
    if mixed:
        raise DepthlabError(
            f"{mixed} pair(s) of runs would mix recipes {', '.join(map(str, recipes))}: their two runs were trained "
            "by different versions of the training code. Train the sweep again (`depthlab run`) so that every "
            "run has the current recipe, or pass --allow-mixed-recipes to pair them anyway")
    return {"recipes": recipes, "n_superseded": superseded, "n_mixed_recipes": mixed}


def compare_report(records: list[RunRecord], margin: float | None = None, by: str | None = None, *,
                   metrics=DEFAULT_METRICS, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0,
                   contrast: str = DEFAULT_CONTRAST, allow_mixed_recipes: bool = False) -> dict:
    """The band table and the paired comparison of each metric for every two values of `contrast`, as one
    JSON-serialisable dict: `paired[metric]` is a list with one comparison per pair of values. Refuses runs
    of different recipes in one pair unless `allow_mixed_recipes` (then they are paired and counted)."""
    with _remembering():
        return _compare_report(records, margin, by, metrics, alpha, n_boot, seed, contrast, allow_mixed_recipes)


def _compare_report(records, margin, by, metrics, alpha, n_boot, seed, contrast, allow_mixed_recipes) -> dict:
    counts = dict.fromkeys(STATUSES, 0)
    for rec in records:
        counts[rec.status] = counts.get(rec.status, 0) + 1
    if contrast != DEFAULT_CONTRAST:
        check_contrast(records, contrast)
    if allow_mixed_recipes:
        kept, superseded = latest_recipes(records)
        recipes = {"recipes": sorted({r.recipe for r in kept if r.recipe is not None}),
                   "n_superseded": superseded, "allow_mixed_recipes": True}
    else:
        recipes = check_recipes(records, contrast)
    values = contrast_values(latest_recipes(records)[0], contrast)
    value_pairs = [(a, b) for i, a in enumerate(values) for b in values[i + 1:]]
    notes = [
        f"d = b - a over pairs of runs whose configs differ only in {contrast}.",
        "Pairs with a diverged, failed or blown-up run (done, but with a final training loss over "
        f"{BLOWN_UP} x chance level) are left out of the statistics and counted per value: if one value "
        "diverges more often, its loss alone flatters it. So are pairs with a run that did not learn (a final "
        f"training loss over {NOT_LEARNED:g} x chance level): with fewer than {MIN_PAIRS} learned pairs the "
        "verdict says 'not learned'.",
        "Verdict: 'equivalent' when TOST p < alpha against the margin; a value is 'better' when the bootstrap CI "
        "of the mean d excludes 0 (both are said when both hold); else 'inconclusive' (also with fewer than 3 "
        "pairs).",
    ]
    if recipes["n_superseded"]:
        notes.append(f"{recipes['n_superseded']} run(s) trained by an older recipe of a config that a newer recipe "
                     "trained again are left out (superseded).")
    by_precision = Counter(filter(None, (r.precision for r in latest_recipes(records)[0])))
    if len(by_precision) > 1:
        notes.append("Runs were trained in several precisions (" + ", ".join(
            f"{p} {n}" for p, n in sorted(by_precision.items())) + "): a pair whose two runs differ in precision "
            "is still compared (see 'pairs mix precisions'); bf16 moves final metrics by about 1%, so read small "
            "differences of such pairs with care, or train them again in one precision (a new store).")
    return _json_safe(dict(
        n_runs=len(records), counts=counts, contrast=contrast, values=values, by=by, recipes=recipes,
        precisions=dict(sorted(by_precision.items())),
        band_table=band_table(records, contrast),
        paired=_paired_by_metric(records, list(metrics), value_pairs, margin, by, alpha, n_boot, seed, contrast,
                                 allow_mixed_recipes),
        notes=notes,
    ))


def _paired_by_metric(records, metrics, value_pairs, margin, by, alpha, n_boot, seed, contrast,
                      allow_mixed_recipes) -> dict[str, list[dict]]:
    """{metric: `paired` of each two values}, the metrics of two values computed together (`_paired`)."""
    done = [_paired(records, metrics, margin, by, alpha, n_boot, seed, contrast, a, b, allow_mixed_recipes)
            for a, b in value_pairs]
    return {m: [results[j] for results in done] for j, m in enumerate(metrics)}


# -- text rendering ---------------------------------------------------------------------------------------------


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def text_table(headers: list[str], rows: list[list], align: str) -> str:
    """Aligned plain-text columns; `align` has one 'l' or 'r' per column."""
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(r, widths, align)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def _ci(lo, hi) -> str:
    return "-" if lo is None else f"[{lo:.4g}, {hi:.4g}]"


def format_report(report: dict) -> str:
    """The report as plain-text tables, readable in a terminal."""
    counts, contrast = report["counts"], report.get("contrast", DEFAULT_CONTRAST)
    values = report.get("values", [])
    title = ("parallel (shallow) vs sequential (deep) wiring at equal parameters" if contrast == "topology"
             else f"{contrast}: " + " vs ".join(value_label(contrast, v) for v in values))
    recipes = report.get("recipes") or {}
    out = [
        f"depthlab compare: {title}",
        f"runs: {report['n_runs']} (" + ", ".join(f"{s} {n}" for s, n in counts.items()) + ")"
        + (f"; recipe {', '.join(map(str, recipes['recipes']))}" if recipes.get("recipes") else "")
        + (f"; precision {', '.join(report['precisions'])}" if report.get("precisions") else ""),
        "",
        f"Mean final metrics of done runs by {contrast} and Q band (Q = training examples x outputs / parameters)",
    ]
    rows = [[r["dataset"], value_label(contrast, r["value"]) if contrast != "topology" else r["value"], r["q_band"],
             r["n"], r["train_loss_mean"], r["train_loss_std"], r["val_loss_mean"], r["val_loss_std"],
             r["train_acc_mean"], r["val_acc_mean"]]
            for r in report["band_table"]]
    headers = ["dataset", contrast, "Q band", "n", "train_loss", "sd", "val_loss", "sd", "train_acc", "val_acc"]
    out.append(text_table(headers, rows, "lllrrrrrrr") if rows else "(no done runs)")

    by = report.get("by")
    for metric, results in report["paired"].items():
        if not results:
            out += ["", f"{metric}: only one value of {contrast}: nothing to pair"]
        for res in results:
            out += [""] + _format_comparison(metric, res, by)

    out += ["", "notes:"] + [f"- {n}" for n in report.get("notes", [])]
    return "\n".join(out) + "\n"


def _normal_groups(res: dict) -> str:
    """Which groups' CI is the bootstrap's normal approximation (over N_BOOTSTRAP_MAX pairs), when any is."""
    normal = sum(g.get("ci_method") == "normal" for g in res["groups"])
    return f"; {normal} group(s) of over {N_BOOTSTRAP_MAX:,} pairs: its normal approximation" if normal else ""


def _format_comparison(metric: str, res: dict, by) -> list[str]:
    p, a, b = res["pairs"], res["a_label"], res["b_label"]
    better = "higher" if res["higher_is_better"] else "lower"
    favours = "d > 0" if res["higher_is_better"] else "d < 0"
    mixed = "" if not p.get("n_mixed_recipes") else (
        f"; {p['n_mixed_recipes']} pairs mix recipes" + (" (allowed)" if res.get("allow_mixed_recipes") else
                                                          " (left out)"))
    if p.get("n_mixed_precisions"):
        mixed += f"; {p['n_mixed_precisions']} pairs mix precisions (compared)"
    out = [
        f"{metric}: d = {b} - {a} per pair; {better} is better, so {favours} favours {b}",
        f"  {res['ci_level']:.0%} percentile-bootstrap CI of mean d ({res['n_boot']} resamples, seed "
        f"{res['seed']}{_normal_groups(res)}); TOST equivalence at alpha {res['alpha']:g}; margin: "
        f"{res['margin_rule']}",
        f"  pairs: {p['n_pairs']} compared of {p['n_found']} found; {p['n_excluded']} excluded with a diverged, "
        f"failed, blown-up or unlearned run (diverged: {a} {p['diverged'][a]}, {b} {p['diverged'][b]}; failed: {a} "
        f"{p['failed'][a]}, {b} {p['failed'][b]}; blown up: {a} {p['blown_up'][a]}, {b} {p['blown_up'][b]}; "
        f"not learned: {a} {p['not_learned'][a]}, {b} {p['not_learned'][b]}); "
        f"{p['n_unfinished']} unfinished; {p['n_missing']} missing {metric}; "
        f"{p['n_unpaired']} runs without partner; {p['n_duplicate']} runs in ambiguous duplicates"
        + (f"; {p['n_identical']} runs of one-block pairs (identical wirings) left out"
           if res.get("contrast", "topology") == "topology" else "") + mixed,
    ]
    headers = ["dataset", "Q band"] + ([by] if by else []) + [
        "pairs", "excl", "mean d", "median d", "CI", f"wins {b}/{a}/tie", "margin", "TOST p", "verdict"]
    rows = [
        [g["dataset"], g["q_band"]] + ([_fmt(g["by_value"])] if by else []) + [
            g["n_pairs"], g["n_excluded"], g["mean"], g["median"], _ci(g["ci_low"], g["ci_high"]),
            f"{g['wins_b']}/{g['wins_a']}/{g['ties']}", g["margin"],
            None if g["tost_p"] is None else float(f"{g['tost_p']:.3g}"), g["verdict"]]
        for g in res["groups"]
    ]
    align = "ll" + ("l" if by else "") + "rrrrlrrrl"
    out.append(text_table(headers, rows, align) if rows else f"(no {a}/{b} pairs)")
    return out



# -- the answer on one screen: the verdicts first, then (--details) the tables above -----------------------------

GLUE = "\x00"  # a space the wrapping keeps (inside a CI, a label), printed as a space
ANSWER_WIDTH = 100  # columns when stdout is not a terminal


def terminal_width(fallback: int = ANSWER_WIDTH) -> int:
    """The terminal's width in columns (COLUMNS when set); `fallback` when stdout is not a terminal."""
    return shutil.get_terminal_size((fallback, 40)).columns


def wrap_line(line: str, width: int) -> list[str]:
    """`line` as lines of at most `width` characters, broken only at spaces (never inside a word, and at a glued
    space only when its group alone is wider than a line); continuation lines are indented 4 more than the first.
    A single word wider than `width` stands alone on its line (the one case a line can be longer)."""
    if len(line) <= width:
        return [line.replace(GLUE, " ")]
    lead = len(line) - len(line.lstrip(" "))
    indent = " " * (lead + 4) if lead + 4 <= width // 2 else ""
    words = []
    for word in line.split(" "):
        if word:
            words += word.split(GLUE) if len(word) > width - len(indent) else [word]
    out, cur = [], " " * lead
    for word in words:
        if cur.strip() and len(cur) + 1 + len(word) > width:
            out.append(cur)
            cur = indent
        if not cur.strip():
            cur = cur + word if len(cur) + len(word) <= width else word
        else:
            cur += " " + word
    out.append(cur)
    return [part.replace(GLUE, " ").rstrip() for part in out]


def _glued(text: str) -> str:
    return str(text).replace(" ", GLUE)


def format_answer(report: dict, width: int | None = None, *, details: bool = False, store: str | None = None,
                  sweep: str | None = None) -> str:
    """The report's answer on one screen, lines at most `width` characters (default: the terminal's, or
    ANSWER_WIDTH when stdout is not one): a header (contrast, runs by status, recipe, precision), then per metric
    one line per pair of values with d = b - a (mean over the pairs used and its CI), pairs used/found and the
    verdict, followed by short lines per Q band (and per `by` value) where there are several; with more than two
    values a ranking of the values by their mean over done runs. Last, how to see the full tables; `details`:
    the full tables (`format_report`) follow. `store`/`sweep`: named in that last line's command."""
    width = terminal_width() if width is None else width
    contrast = report.get("contrast", DEFAULT_CONTRAST)
    values = report.get("values", [])
    results = [res for found in report["paired"].values() for res in found]
    lines = [_answer_header(report)]
    if results:
        level = results[0].get("ci_level", 0.95)
        normal = any(g.get("ci_method") == "normal" for res in results for g in res["groups"])
        lines.append(f"each line: d = b - a, its mean over the pairs [{level:.0%} bootstrap CI"
                     + (f", over {N_BOOTSTRAP_MAX:,} pairs its normal approximation" if normal else "")
                     + "]; pairs used/found; verdict")
    blocks = []
    pad = max(map(len, report["paired"]), default=0)
    for metric, found in report["paired"].items():
        block = [] if found else [f"{metric}: only one value of {contrast}: nothing to pair"]
        for res in found:
            block += _verdict_lines(_glued(metric.ljust(pad)), res, report.get("by"))
        if len(values) > 2:
            block += _ranking_lines(report, metric)
        blocks.append(block)
    spaced = any(len(block) > 1 for block in blocks)
    for i, block in enumerate(blocks):
        lines += ([""] if i == 0 or spaced else []) + block
    if len(report.get("precisions") or {}) > 1:  # the one note that changes how a verdict reads
        first = next(iter(report["paired"].values()), [])
        mixed = sum(res["pairs"].get("n_mixed_precisions", 0) for res in first)
        lines += ["", f"note: runs were trained in several precisions; {mixed} pairs mix precisions (bf16 moves "
                  "final metrics by about 1%: read small differences with care)"]
    tables = f"means per Q{GLUE}band, margins, exclusions, notes"
    if not details:
        command = " ".join(["depthlab compare"] + ([f"--store {shlex.quote(store)}"] if store else [])
                           + ([f"--sweep {shlex.quote(sweep)}"] if sweep else []) + ["--details"])
        lines += ["", (f"`{command}` shows" if store or sweep else "--details shows") + f" the full tables ({tables})"]
    text = "\n".join(part for line in lines for part in wrap_line(line, width)) + "\n"
    return text + "\n" + format_report(report) if details else text


def _answer_header(report: dict) -> str:
    contrast = report.get("contrast", DEFAULT_CONTRAST)
    labels = [_glued(value_label(contrast, v)) for v in report.get("values", [])]
    statuses = ", ".join(f"{s}{GLUE}{n}" for s, n in report["counts"].items() if n)
    recipes = (report.get("recipes") or {}).get("recipes")
    return (f"depthlab compare, {contrast}: {' vs '.join(labels) or 'no values'}; {report['n_runs']} runs"
            + (f" ({statuses})" if statuses else "")
            + (f"; recipe {', '.join(map(str, recipes))}" if recipes else "")
            + (f"; precision {', '.join(report['precisions'])}" if report.get("precisions") else ""))


def _d_text(g: dict) -> str:
    """d's mean with its CI, the pairs used of those found, and the verdict, for one group's row."""
    found = g["n_pairs"] + g.get("n_excluded", 0) + g.get("n_unfinished", 0) + g.get("n_missing", 0)
    used = f"{g['n_pairs']}/{found}{GLUE}pairs: {g['verdict']}"
    if g.get("mean") is None:  # no pair used: no d
        return used
    ci = "no CI" if g.get("ci_low") is None else f"[{g['ci_low']:+.3g}, {g['ci_high']:+.3g}]"
    d = _glued(f"d {g['mean']:+.3g} {ci}")
    return f"{d}, {used}"


def _verdict_lines(metric: str, res: dict, by: str | None) -> list[str]:
    """One line per dataset for the pair of values in `res` (its "all" group), each followed by short lines
    per Q band when the pairs fall in several, and per `by` value when there are several."""
    head = f"{metric} {_glued(res['b_label'])} - {_glued(res['a_label'])}"
    groups = res["groups"]
    if not groups:
        p = res["pairs"]
        return [f"{head}: no pairs ({p.get('n_unpaired', 0)} runs without a partner)"]
    datasets = list(dict.fromkeys(g["dataset"] for g in groups))
    out = []
    for dataset in datasets:
        rows = [g for g in groups if g["dataset"] == dataset]
        bands = {g["q_band"] for g in rows} - {ALL}
        by_values = {canonical_json(g.get("by_value")) for g in rows if by and g.get("by_value") != ALL}
        for g in rows:
            band, by_value = g["q_band"], g.get("by_value", ALL) if by else ALL
            if band == ALL and by_value == ALL:
                out.append(f"{head}" + (f" on {_glued(dataset)}" if len(datasets) > 1 else "") + f": {_d_text(g)}")
            elif (band == ALL or len(bands) > 1) and (by_value == ALL or len(by_values) > 1):
                where = ([f"Q{GLUE}band{GLUE}{band}"] if band != ALL else []) + (
                    [_glued(f"{by}={_fmt(by_value)}")] if by_value != ALL else [])
                out.append("  " + ", ".join(where) + f": {_d_text(g)}")
    return out


def _ranking_lines(report: dict, metric: str) -> list[str]:
    """Per dataset, the contrast's values by their mean `metric` over done runs, best first (from the band
    table: the bands' means weighted by their runs); no line for a metric the band table does not hold (a shift
    table's), and none ranked where no pair of learned runs was compared (runs at chance level rank noise)."""
    contrast, key = report.get("contrast", DEFAULT_CONTRAST), f"{metric}_mean"
    rows = [r for r in report["band_table"] if r.get(key) is not None]
    if not rows:
        return []
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    higher = metric.endswith("_acc")
    troubled = any(sum(res["pairs"].get(k, {}).get(label, 0) for k in ("not_learned", "blown_up")
                       for label in (res["a_label"], res["b_label"]))
                   for res in report["paired"].get(metric, []))
    if troubled and not any(res["pairs"]["n_pairs"] for res in report["paired"].get(metric, [])):
        return [f"{metric} ranking: none, no pair of learned runs (see the verdicts)"]
    out = []
    for dataset in datasets:
        sums: dict[str, list] = {canonical_json(v): [v, 0.0, 0] for v in report.get("values", [])}
        for r in rows:
            if r["dataset"] == dataset:
                entry = sums.setdefault(canonical_json(r["value"]), [r["value"], 0.0, 0])
                entry[1] += r[key] * r["n"]
                entry[2] += r["n"]
        ranked = sorted(((v, total / n) for v, total, n in sums.values() if n),
                        key=lambda vm: -vm[1] if higher else vm[1])
        missing = [v for v, _, n in sums.values() if not n]
        out.append(f"{metric} ranking" + (f" on {_glued(dataset)}" if len(datasets) > 1 else "")
                   + f", best first ({'highest' if higher else 'lowest'} mean over done runs): "
                   + ", ".join(f"{_glued(value_label(contrast, v))}{GLUE}{m:.4g}" for v, m in ranked)
                   + (f"; no done runs: {', '.join(_glued(value_label(contrast, v)) for v in missing)}"
                      if missing else "")
                   + ("; some runs did not learn or blew up (see the verdicts)" if troubled else ""))
    return out
