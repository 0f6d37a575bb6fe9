"""The study's design: which networks it trains at each parameter budget, and which of them each lever compares.

A `StudySpec` is the whole design as data (YAML on disk: `depthlab study --write-spec`, then `depthlab study
FILE`); `designs(spec)` turns it into `Design`s, one per network (a run config without its seed), each trained
with paired seeds. The levers are a registry (`LEVERS`): each names the contrast it tests (the config fields its
designs differ in; `depthlab.analysis.compare` pairs runs that differ in nothing else) and builds its designs for a
budget. A design two levers need (the frontier's 4-block network is the wiring lever's sequential one) is one
design, trained once.

- depth: blocks 1, 2, 4, 8 (16) with the width solved from the budget (`budget_by: width`): the frontier from
  shallow-and-wide to deep-and-narrow.
- wiring (Deep networks made shallow, paper 000): at each depth of 2 or more, sequential, the `groups:g` family
  and parallel, the same width (every wiring of (C, n, k) has the same parameters).
- scaling (paper 003; Marion et al., "Scaling ResNets in the large-depth regime"; De & Smith's SkipInit; Zhang et
  al.'s Fixup): at the deepest depth, BatchNorm with λ = 1 against norm-free λ = 1/√n, 1/n, SkipInit's learnable
  scale at 0 and Fixup.
- kernel (UniRepLKNet, Ding et al. 2024): a 3×3 conv block against `lk` blocks with K = 7 and 13 and the dilated
  re-parameterisation, at the middle depth, the same width, the hidden width solved from the budget.
- crop (PreCropping, Wang et al. 2023): the middle depth at twice the budget, pruned at initialisation to half its
  weights by the PreCrop parameter allocation, as a crop (a dense, narrower network) and as a mask, against the
  dense design of the budget.
- shift (Normalisation under covariate shift, alpha-BN): the frontier's trained designs on the dataset's
  corruption suite; no designs of its own (depthlab.shift measures them).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable

from depthlab.errors import DepthlabError, SpecError
from depthlab.records import canonical_json, config_id
from depthlab.study.levels import ALPHA, DEFAULT_LEVEL, LEVELS, MARGIN, METRIC, SETTINGS

@dataclass(frozen=True)
class Lever:
    name: str
    title: str
    question: str
    reference: str
    contrast: str   # the config fields its designs differ in, '+'-joined (depthlab.analysis.compare's contrasts)
    build: Callable  # (spec, budget) -> list of (name, label, run fields) of its designs
    pairs: Callable  # (its designs, in build order) -> list of (a, b) design names to compare, d = b - a
    trains: bool = True  # False: it measures other levers' trained designs (shift)


@dataclass(frozen=True)
class Design:
    """One network of a study at one budget: run fields without the seed, the levers that use it."""
    name: str
    label: str
    budget: int
    fields: dict
    levers: tuple[str, ...]

    @functools.cached_property
    def key(self) -> str:
        """Its identity: the id of its full config at seed 0 (`depthlab.study.decide.design_key` of its runs)."""
        return config_id(self.config(0).to_dict())

    def config(self, seed: int):
        from depthlab.spec.config import RunConfig

        return RunConfig.from_dict({**self.fields, "seed": seed})


@dataclass(frozen=True)
class StudySpec:
    """A study, as `depthlab study --write-spec` writes it and `depthlab study FILE` reads it."""
    name: str
    dataset: str = "mnist"
    level: str = DEFAULT_LEVEL
    budgets: tuple[int, ...] = ()
    levers: tuple[str, ...] = ()
    metric: str = METRIC
    margin: float = MARGIN
    alpha: float = ALPHA
    seeds: int = 0
    max_seeds: int = 0
    seed_step: int = 0
    epochs: int = 0
    train_subset: int | None = 0
    depths: tuple[int, ...] = ()
    settings: dict = field(default_factory=dict)
    kernels: tuple[int, ...] = ()            # the kernel lever's lk sizes (dilated re-parameterisation)
    crop_density: float = 0.5                # the crop lever: the kept fraction of the twice-budget design
    crop_method: str = "precrop_params"
    shift_methods: tuple[str, ...] = ("source", "alpha_bn", "tent")
    shift_batch_sizes: tuple[int, ...] = (1, 64)
    shift_examples: int = 0
    shift_corruptions: int | None = 0
    eval_every: int = 0                      # validate every N-th epoch and the last (0: the level's)

    def __post_init__(self):
        self._check_names()
        level = LEVELS[self.level]
        for name in ("seeds", "max_seeds", "seed_step", "epochs", "shift_examples", "eval_every"):  # 0: the level's
            if getattr(self, name) == 0:
                object.__setattr__(self, name, getattr(level, name))
        for name in ("train_subset", "shift_corruptions"):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, getattr(level, name))
        for name, default in (("budgets", level.budgets), ("depths", level.depths), ("kernels", level.kernels),
                              ("levers", tuple(LEVERS))):
            object.__setattr__(self, name, tuple(getattr(self, name) or default))
        for name in ("shift_methods", "shift_batch_sizes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "settings", {**self._sized_settings(), **(self.settings or {})})
        self._check_values()

    def _sized_settings(self) -> dict:
        """`SETTINGS` and the level's training subset, cut to the dataset's size where it is smaller (the synthetic
        set has 1,024 training and 256 test examples): a fifth of the training set validates, the rest trains."""
        from depthlab.data import registry

        n_train, n_test = registry.entry(self.dataset).sizes
        settings = dict(SETTINGS, val_split=min(SETTINGS["val_split"], n_train // 5),
                        test_subset=min(SETTINGS["test_subset"], n_test))
        if self.train_subset is not None and self.train_subset > n_train - settings["val_split"]:
            object.__setattr__(self, "train_subset", None)
        return settings

    def _check_names(self) -> None:
        from depthlab.data import registry
        from depthlab.spec.grid import check_name

        object.__setattr__(self, "name", check_name(self.name))
        if self.level not in LEVELS:
            raise SpecError("level", self.level, ", ".join(LEVELS))
        registry.entry(self.dataset)  # SpecError naming the datasets
        for lever in self.levers:
            if lever not in LEVERS:
                raise SpecError("levers", lever, ", ".join(LEVERS))

    def _check_values(self) -> None:
        from depthlab.spec.config import field_names

        for name in ("seeds", "max_seeds", "seed_step", "epochs", "shift_examples", "eval_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SpecError(name, value, "a positive integer")
        if self.max_seeds < self.seeds:
            raise SpecError("max_seeds", self.max_seeds, f"at least seeds ({self.seeds})")
        for name in ("budgets", "depths"):
            values = getattr(self, name)
            if not values or any(not _is_int(v) or v < 1 for v in values):
                raise SpecError(name, list(values), "a list of positive integers")
        if self.metric not in ("val_acc", "val_loss", "test_acc", "test_loss"):
            raise SpecError("metric", self.metric, "val_acc, val_loss, test_acc or test_loss")
        if not 0 < self.alpha < 1:
            raise SpecError("alpha", self.alpha, "a number in (0, 1)")
        if not isinstance(self.margin, (int, float)) or self.margin <= 0:
            raise SpecError("margin", self.margin, "a positive number (in the metric's unit)")
        owned = {"dataset", "seed", "epochs", "train_subset", "blocks", "width", "hidden", "topology",
                 "param_budget", "budget_by"}
        for key in self.settings:
            if key not in field_names() or key in owned:
                allowed = ", ".join(f for f in field_names() if f not in owned)
                raise SpecError(f"settings.{key}", self.settings[key], f"a run field the study does not set: "
                                f"{allowed}")

    @property
    def higher_is_better(self) -> bool:
        return self.metric.endswith("_acc")

    @property
    def looks(self) -> int:
        """Rounds a contrast can be tested in (its first seeds, then each step to the cap)."""
        extra = self.max_seeds - self.seeds
        return 1 + -(-extra // self.seed_step) if extra > 0 else 1

    @property
    def sweep(self) -> str:
        """The name of the study's runs in the store."""
        return f"study {self.name}"

    def run_fields(self) -> dict:
        """The fields every run of the study shares."""
        return {**self.settings, "dataset": self.dataset, "epochs": self.epochs, "train_subset": self.train_subset}

    def to_dict(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, values: dict, origin: str = "study spec") -> "StudySpec":
        if not isinstance(values, dict):
            raise SpecError(origin, type(values).__name__, "a mapping of study fields")
        allowed = [f.name for f in fields(cls)]
        for key in values:
            if key not in allowed:
                raise SpecError(key, values[key], "a study field: " + ", ".join(allowed))
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values)

    def replace(self, **changes) -> "StudySpec":
        return replace(self, **changes)


def parse_budgets(text: str) -> tuple[int, ...]:
    """"20k,80k" -> (20000, 80000); also 1.5M, 5e4 and plain integers."""
    out = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kKmM]?)\s*", part)
        if not match:
            raise SpecError("budget", part.strip(), "parameter counts such as 20k,80k or 50000")
        value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()]
        if value < 1 or value != int(value):
            raise SpecError("budget", part.strip(), "a positive whole number of parameters")
        out.append(int(value))
    return tuple(out)


def default_name(values: dict) -> str:
    """A study's name from its fields when none is given: dataset-level-budgets, and its levers when not all."""
    level = values.get("level", DEFAULT_LEVEL)
    budgets = values.get("budgets") or LEVELS[level].budgets if level in LEVELS else values.get("budgets") or ()
    short = lambda b: f"{b // 1000}k" if isinstance(b, int) and b % 1000 == 0 else str(b)
    name = f"{values.get('dataset', 'mnist')}-{level}-" + ",".join(short(b) for b in budgets)
    levers = values.get("levers")
    return name if not levers or list(levers) == list(LEVERS) else f"{name}-{'+'.join(levers)}"


def read_spec_file(path) -> dict:
    """The fields of a study spec file (YAML, as `--write-spec` writes it); one clear DepthlabError otherwise."""
    import yaml

    from depthlab.spec.grid import load_yaml, yaml_problem

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise DepthlabError(f"{path}: cannot read the study spec ({err})") from None
    try:
        values = load_yaml(text)
    except yaml.YAMLError as err:
        raise DepthlabError(f"{path}: not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(values, dict):
        raise DepthlabError(f"{path}: a study spec is a mapping of study fields (write one with --write-spec)")
    return values


# -- the levers --------------------------------------------------------------------------------------------------

def _frontier(spec: StudySpec, budget: int):
    out = []
    for n in spec.depths:
        values = sized(spec, budget, blocks=n, topology="sequential")
        out.append((f"d{n}", f"{n} block{'s' * (n > 1)}, sequential, width {values['width']}", values))
    return out


def _wiring(spec: StudySpec, budget: int):
    out = []
    for n in spec.depths:
        if n < 2:
            continue
        sequential = sized(spec, budget, blocks=n, topology="sequential")
        wirings = ["sequential"] + [f"groups:{g}" for g in range(n - 1, 1, -1) if n % g == 0][::-1] + ["parallel"]
        for topology in wirings:  # every wiring of (width, blocks, hidden) has the same parameters
            out.append((f"d{n}" if topology == "sequential" else f"d{n}-{topology.replace(':', '')}",
                        f"{n} blocks, {topology}, width {sequential['width']}", {**sequential, "topology": topology}))
    return out


def _wiring_pairs(designs: list) -> list:
    """Within each depth: sequential against each other wiring."""
    by_depth: dict = {}
    for d in designs:
        by_depth.setdefault(d.fields["blocks"], []).append(d.name)
    return [(names[0], other) for names in by_depth.values() for other in names[1:]]


SCALINGS = (  # (name, label, fields): the paper-003 contrast at the deepest depth
    ("bn", "BatchNorm, λ = 1", dict(norm="batch", residual_scale="1", init="default")),
    ("nf-sqrt", "norm-free, λ = 1/√n", dict(norm="none", residual_scale="1/sqrt(n)", init="default")),
    ("nf-1n", "norm-free, λ = 1/n", dict(norm="none", residual_scale="1/n", init="default")),
    ("skipinit", "norm-free, SkipInit (learnable λ from 0)", dict(norm="none", residual_scale="1", init="skipinit")),
    ("fixup", "norm-free, Fixup", dict(norm="none", residual_scale="1", init="fixup")),
)


def _scaling(spec: StudySpec, budget: int):
    n = max(spec.depths)
    width = sized(spec, budget, blocks=n, topology="sequential")["width"]
    out = []
    for name, label, values in SCALINGS:
        shared = name == "bn" and spec.settings.get("norm", "batch") == "batch"  # the frontier's deepest design
        out.append((f"d{n}" if shared else f"d{n}-{name}", f"{n} blocks, {label}",
                    sized(spec, budget, width=width, blocks=n, topology="sequential", **values)))
    return out


def _middle(spec: StudySpec) -> int:
    deep = [n for n in spec.depths if n >= 2] or list(spec.depths)
    return deep[len(deep) // 2 - (len(deep) % 2 == 0)] if len(deep) > 1 else deep[0]


def _kernel(spec: StudySpec, budget: int):
    n = _middle(spec)
    conv = sized(spec, budget, blocks=n, topology="sequential")
    out = [(f"d{n}", f"{n} blocks, conv 3x3, width {conv['width']}", conv)]
    for k in spec.kernels:
        out.append((f"d{n}-lk{k}", f"{n} blocks, lk {k}x{k} dilated, width {conv['width']}",
                    sized(spec, budget, width=conv["width"], blocks=n, topology="sequential", kernel=k, branch="lk",
                          reparam="dilated")))
    return out


def _crop(spec: StudySpec, budget: int):
    n = _middle(spec)
    dense, wide = (sized(spec, b, blocks=n, topology="sequential") for b in (budget, 2 * budget))
    twice = dict(wide, prune=spec.crop_method, density=spec.crop_density)
    return [(f"d{n}", f"{n} blocks, dense at the budget, width {dense['width']}", dense),
            (f"d{n}-crop", f"{n} blocks at 2x budget (width {wide['width']}), {spec.crop_method} crop to "
             f"{spec.crop_density:g}", dict(twice, prune_structure="crop")),
            (f"d{n}-mask", f"{n} blocks at 2x budget (width {wide['width']}), {spec.crop_method} mask at "
             f"{spec.crop_density:g}", dict(twice, prune_structure="mask"))]


def _first_against_rest(designs: list) -> list:
    return [(designs[0].name, d.name) for d in designs[1:]]


def _frontier_pairs(designs: list) -> list:
    """Each depth against the next deeper one: the frontier step by step."""
    return [(a.name, b.name) for a, b in zip(designs, designs[1:])]


LEVERS: dict[str, Lever] = {lever.name: lever for lever in (
    Lever("depth", "Depth against width", "fewer, wider blocks or more, narrower ones, at equal parameters",
          "the depth-width frontier at a parameter budget", "blocks+width+hidden", _frontier,
          _frontier_pairs),
    Lever("wiring", "Sequential, grouped or parallel", "the deep stack, the groups:g family or one broad layer, "
          "at equal parameters and FLOPs", "Deep networks made shallow (paper 000)", "topology", _wiring,
          _wiring_pairs),
    Lever("scaling", "Normalisation or residual scaling", "BatchNorm against norm-free depth tamed by λ at the "
          "deepest depth", "paper 003; Marion et al. (scaling-resnets); SkipInit; Fixup",
          "norm+residual_scale+init+hidden", _scaling, _first_against_rest),
    Lever("kernel", "Large kernels instead of depth", "a 3x3 block against large depthwise kernels with dilated "
          "re-parameterisation, at equal parameters", "UniRepLKNet (Ding et al., 2024)", "branch+kernel+reparam+hidden",
          _kernel, _first_against_rest),
    Lever("crop", "Width decided at initialisation", "a wider network cropped to the budget at initialisation "
          "(PreCropping) against the dense design of the budget, and its mask", "PreCropping (Wang et al., 2023)",
          "width+hidden+prune_structure+prune+density", _crop, _first_against_rest),
    Lever("shift", "Robustness under covariate shift", "the frontier's designs on the corruption suite with "
          "source, alpha-BN and TENT statistics", "alpha-BN (You et al., 2021); TENT (Wang et al., 2021)",
          "method", lambda spec, budget: [], lambda designs: [], trains=False),
)}


WIDTH_RATIO = 1.5  # mean hidden / width of a design the study sizes: at most this far from 1 either way (the
# closest to 1 is taken; small budgets with one block need about 1.3 to meet 1%)
BUDGET_TOLERANCE = 0.01  # inference parameters within 1% of the budget


def sized(spec: StudySpec, budget: int, **values) -> dict:
    """`values` (the design's own fields) with the width (unless given) and per-block hidden widths that bring
    its inference parameters within BUDGET_TOLERANCE of `budget`. A hidden width common to all blocks moves the
    count in steps of about 18·width·blocks parameters (9% of a 20k budget at 8 blocks of width 12), and width in
    coarser ones; so the hidden widths differ by at most one between blocks (the steps are then one block's),
    their mean within WIDTH_RATIO of the width (the paper's block has hidden = width). SpecError, naming the
    smallest budget that fits, when no width does."""
    return dict(_sized(canonical_json(spec.run_fields()), budget, canonical_json(values)))


@functools.lru_cache(maxsize=None)
def _sized(shared: str, budget: int, own: str) -> tuple:
    best = _best_size(shared, budget, own)
    if best is not None:
        return best
    fields_, count = _counter(shared, own)
    n = fields_["blocks"]
    smallest = count(fields_.get("width", 1), (1,) * n)
    if budget < smallest:
        raise SpecError("budget", budget, f"at least {smallest:,} parameters for its {_describe(fields_)} "
                        f"design (the smallest it can be; several times that to learn)")
    fits = next((b for b in (round(budget * (1 + BUDGET_TOLERANCE) ** k) for k in range(1, 400))
                 if _best_size(shared, b, own) is not None), None)
    raise SpecError("budget", budget, f"a budget its {_describe(fields_)} design meets within "
                    f"{BUDGET_TOLERANCE:.0%}: its widths step over {budget:,} at this size"
                    + (f"; {fits:,} is the next that fits" if fits else ""))


def _counter(shared: str, own: str):
    """(the design's fields, count(width, hidden widths) -> inference parameters)."""
    import json

    from depthlab.models import spec_params
    from depthlab.spec.config import RunConfig

    fields_ = {**json.loads(shared), **json.loads(own), "seed": 0}
    count = lambda width, hidden: spec_params(
        RunConfig.from_dict({**fields_, "width": width, "hidden": list(hidden)}).model_spec(), merged=True)
    return fields_, count


@functools.lru_cache(maxsize=None)
def _best_size(shared: str, budget: int, own: str) -> tuple | None:
    """The (own fields, width, hidden widths) items of the best size for `budget`, or None when none fits."""
    import json

    values = json.loads(own)
    fields_, count = _counter(shared, own)
    n = fields_["blocks"]
    best = None
    widths = [values["width"]] if "width" in values else range(1, 1025)
    for width in widths:
        base, per = count(width, (1,) * n), count(width, (2,) + (1,) * (n - 1)) - count(width, (1,) * n)
        total = max(n, round((budget - base) / per) + n)  # the hidden widths' sum
        hidden = tuple(total // n + (i < total % n) for i in range(n))
        error = abs(count(width, hidden) - budget) / budget
        ratio = abs(math.log(total / n / width))
        if error <= BUDGET_TOLERANCE and (ratio <= math.log(WIDTH_RATIO) or "width" in values):
            if best is None or ratio < best[0]:
                best = (ratio, width, hidden)
        if total / n < width / WIDTH_RATIO:
            break  # wider only makes hidden narrower
    if best is None:
        return None
    _, width, hidden = best
    return tuple({**values, "width": width, "hidden": list(hidden)}.items())


def _describe(values: dict) -> str:
    keys = ("blocks", "topology", "branch", "kernel", "norm", "width")
    return ", ".join(f"{k}={values[k]}" for k in keys if k in values)


def designs(spec: StudySpec) -> list[Design]:
    """Every design of the study, budget by budget, lever by lever, each once (a design two levers share keeps the
    first lever's name); each is validated, so that a budget no design can meet is refused before anything runs."""
    from depthlab.spec.config import RunConfig
    from depthlab.spec.grid import check_data_sizes

    out: dict[tuple, Design] = {}
    for budget in spec.budgets:
        for lever_name in spec.levers:
            try:
                built = LEVERS[lever_name].build(spec, budget)
            except SpecError as err:
                if err.field != "budget":
                    raise
                raise SpecError("budget", budget, f"{err.allowed}: lever {lever_name} (or leave it out with "
                                "--levers)") from None
            for name, label, values in built:
                fields_ = {**spec.run_fields(), **values}
                config = RunConfig.from_dict({**fields_, "seed": 0})
                check_data_sizes(config)
                key = (budget, config_id(config.to_dict()))
                if key in out:
                    old = out[key]
                    out[key] = replace(old, levers=tuple(dict.fromkeys((*old.levers, lever_name))))
                else:
                    out[key] = Design(name=name, label=label, budget=budget, fields=fields_, levers=(lever_name,))
    return list(out.values())


def lever_designs(all_designs: list[Design], lever: str, budget: int) -> list[Design]:
    """The designs of `lever` at `budget`, in the order the lever built them."""
    return [d for d in all_designs if d.budget == budget and lever in d.levers]


def lever_pairs(all_designs: list[Design], lever: str, budget: int) -> list[tuple[Design, Design]]:
    """The (a, b) designs `lever` compares at `budget`."""
    mine = lever_designs(all_designs, lever, budget)
    by_name = {d.name: d for d in mine}
    return [(by_name[a], by_name[b]) for a, b in LEVERS[lever].pairs(mine)]


def study_sweep(spec: StudySpec, seeds: dict[str, int], costs: dict | None = None):
    """The study's runs as one sweep: every design with its seeds so far (`seeds`: {design key: n}; the first
    round's count where absent), so that same-shape runs of every lever and budget train in one pack. With
    `costs` ({design key: cost}), the designs slowest to train come first: packs start in that order, so the
    longest start first and the short ones fill the other workers around them, instead of a long pack running
    alone at the end (a large-kernel pack takes several times a 3x3 one)."""
    from depthlab.spec.grid import SweepSpec

    unique = list({d.key: d for d in reversed(designs(spec))}.values())[::-1]  # the first of each key, in order
    speed = lambda d: ((costs or {}).get(d.key) or {}).get("train_samples_per_s") or float("inf")
    runs = []
    for d in sorted(unique, key=speed):  # stable: designs of unknown cost keep their order, last
        # a list in a sweep's run is an axis to vary: a design's per-block hidden widths are one value
        fixed = {k: [v] if isinstance(v, list) else v for k, v in d.fields.items()}
        runs.append({**fixed, "seed": list(range(seeds.get(d.key, spec.seeds)))})
    return SweepSpec(name=spec.sweep, description=f"depthlab study {spec.name}", runs=runs)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
