"""`RunConfig`: one training run, as a flat record of model, training and data fields.

The flat dict (`to_dict`) is what the store hashes into a run id, so every field that changes a result is here,
and nothing else is. The model's fields are `depthlab.models.spec.ModelFields`, declared and validated there once;
`RunConfig` extends them with the data and training fields. Validation happens on construction: a bad value names
the field and the allowed values.

A field added after the first release is declared with `added(default)`: its default is the neutral value that
reproduces what runs did before it existed, and run ids leave a field at that value out (`depthlab.records`), so
adding one renames no stored run. A new field with another neutral value than its default says so
(`added(default, neutral=...)`).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping

from depthlab.choices import AUGMENTS, BUDGET_BY, OPTIMIZERS, SCALE_RULES, SCHEDULES, check  # the CLI reads them too
from depthlab.data import registry
from depthlab.errors import SpecError
from depthlab.models import ModelSpec
from depthlab.models.spec import ModelFields
from depthlab.records import added, canonical_config, canonical_json, declare_run_fields, neutral_defaults

DEFAULT_LR = {"adam": 1e-3, "sgd": 0.05}
BUDGET_TOLERANCE = 0.01  # param_budget must be met within 1%
MAX_BUDGET_WIDTH = 1024
MAX_BUDGET_HIDDEN = 65_536  # far above any network these datasets train, far below one that cannot be built


@declare_run_fields
@dataclass(frozen=True)
class RunConfig(ModelFields):
    # model: the fields of depthlab.models.spec.ModelFields (width, blocks, kernel, hidden, topology, ...)
    # data
    dataset: str = "mnist"
    train_subset: int | None = None      # first K training examples (a fixed order), None = all
    val_split: int | float = 5000        # validation examples carved from train (count or fraction)
    test_subset: int | None = None       # evaluate on the first K test examples only, None = all
    # model sizing and pruning at initialisation
    param_budget: int | None = added(None)   # choose hidden (or width) so the inference parameters are about this
    budget_by: str = added("hidden")         # what param_budget sets: hidden or width
    prune: str = added("none")               # pruning at initialisation: see depthlab.prune.METHODS
    density: float = added(1.0)              # the kept fraction of the prunable weights, in (0, 1]
    prune_structure: str = added("mask")     # mask (sparse, kept through training) or crop (PreCropping: narrower)
    crop_init: str = added("reinit")         # crop: reinit (fresh, its own fan-in) or keep (the dense weights kept)
    # training
    optimizer: str = "adam"              # adam = AdamW (decoupled weight decay); sgd = SGD with Nesterov momentum
    lr: float | None = None              # None: the optimizer's default (adam 1e-3, sgd 0.05)
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 5
    schedule: str = "cosine"
    augment: str = "none"
    seed: int = 0
    init_from: str | None = added(None)  # start from this run's trained weights (rewired to this topology)

    def __post_init__(self):
        self._check_training()
        self._check_subsets()
        self._check_rates_and_start()
        self._check_pruning()
        if self.param_budget is not None:
            self._meet_budget()
        else:
            check("budget_by", self.budget_by, BUDGET_BY)
        super().__post_init__()  # the model fields (ModelFields), with the size a budget chose
        self._check_density_floor()
        self._canonical_spellings()

    def _check_training(self) -> None:
        """The dataset's name, then the training loop's fields: optimizer, schedule, augment (a flip only where
        the dataset allows it), batch_size, epochs, seed."""
        data = registry.entry(self.dataset)  # its shape, classes and whether it may be flipped
        check("optimizer", self.optimizer, OPTIMIZERS)
        check("schedule", self.schedule, SCHEDULES)
        check("augment", self.augment, AUGMENTS)
        if "flip" in self.augment and not data.flip_ok:
            raise SpecError("augment", self.augment, f"none or translate for {self.dataset} (a flip changes "
                            "what its images show)")
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise SpecError(name, value, "a positive integer")
        if not _is_int(self.seed) or self.seed < 0:
            raise SpecError("seed", self.seed, "a non-negative integer")

    def _check_subsets(self) -> None:
        """train_subset, test_subset, val_split."""
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise SpecError(name, value, "a positive integer or null (all)")
        if not isinstance(self.val_split, (int, float)) or isinstance(self.val_split, bool) or self.val_split < 0 \
                or (isinstance(self.val_split, float) and self.val_split >= 1):
            raise SpecError("val_split", self.val_split, "a count (integer ≥ 0) or a fraction in [0, 1)")

    def _check_rates_and_start(self) -> None:
        """lr, weight_decay, and init_from (the run whose weights it starts from)."""
        if self.lr is not None and (not _is_number(self.lr) or self.lr <= 0):
            raise SpecError("lr", self.lr, "a positive number or null (the optimizer's default)")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise SpecError("weight_decay", self.weight_decay, "a number ≥ 0")
        if self.init_from is not None and (not isinstance(self.init_from, str)
                                           or not re.fullmatch(r"[0-9a-f]{16}", self.init_from)):
            raise SpecError("init_from", self.init_from, "null, or the 16-hex-digit id of a run whose weights "
                            "were saved (depthlab run --save-weights)")

    def _check_pruning(self) -> None:
        """prune, density (made a float), prune_structure, crop_init."""
        from depthlab.prune import CROP_INITS, METHODS, STRUCTURES

        check("prune", self.prune, METHODS)
        if not _is_number(self.density) or not 0 < self.density <= 1:
            raise SpecError("density", self.density, "a kept fraction in (0, 1] (1: the dense network)")
        object.__setattr__(self, "density", float(self.density))
        check("prune_structure", self.prune_structure, STRUCTURES)
        check("crop_init", self.crop_init, CROP_INITS)
        if self.init_from is not None and self.cropped:
            # a crop chooses its narrower network from a fresh dense one: trained weights have no dense form
            raise SpecError("init_from", self.init_from, "null with prune_structure crop (a crop chooses its network "
                            "at initialisation); to go on from a cropped run, give its width and hidden widths "
                            "with prune none, as `depthlab convert --finetune-epochs` does")

    def _check_density_floor(self) -> None:
        """A pruned run's density lets every prunable layer of its network keep something
        (`depthlab.prune.density_floor`): below that, a mask leaves a layer without weights (at 1e-9, all of them:
        a constant network), and a crop cannot get as small as asked."""
        if not self.pruned:
            return
        from depthlab.prune import density_floor

        floor, keeps = density_floor(self.model_spec(), self.prune_structure)
        if self.density < floor * (1 - 1e-9):  # the floor itself is allowed, whatever its last bit
            raise SpecError("density", self.density, f"at least {_round_up(floor)} for this run, up to 1 ({keeps}; "
                            f"run {self.branch} k{self.kernel}, {self.blocks} blocks, width {self.width})")

    def _canonical_spellings(self) -> None:
        """One spelling per value, so that equal runs get equal ids (`--set weight_decay=0` reads as the integer 0,
        which must be the same run as a spec's 0.0; `residual_scale=1` the same as the rule "1")."""
        object.__setattr__(self, "residual_scale", canonical_scale(self.residual_scale))
        object.__setattr__(self, "weight_decay", float(self.weight_decay))
        if self.lr is not None:
            object.__setattr__(self, "lr", float(self.lr))
        if self.val_split == 0:
            object.__setattr__(self, "val_split", 0)  # 0.0 (a fraction) and 0 (a count) both carve nothing

    @property
    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def flip(self) -> bool:
        return "flip" in self.augment

    def model_spec(self, in_channels: int | None = None, input_size: int | None = None,
                   num_classes: int | None = None) -> ModelSpec:
        data = registry.entry(self.dataset)
        return ModelSpec(**{f.name: getattr(self, f.name) for f in fields(ModelFields)},
                         in_channels=in_channels or data.channels, input_size=input_size or data.size,
                         num_classes=num_classes or data.num_classes)

    def _meet_budget(self) -> None:
        """Set hidden (or width) so that the inference parameters (`spec_params(merged=True)`) come as close as
        possible to param_budget; refuse the run when the closest is more than BUDGET_TOLERANCE off."""
        from depthlab.models import spec_params

        budget = self.param_budget
        if not _is_int(budget) or budget < 1:
            raise SpecError("param_budget", budget, "a positive integer (inference parameters) or null")
        check("budget_by", self.budget_by, BUDGET_BY)
        count = lambda **size: spec_params(self.replace_unchecked(**size).model_spec(), merged=True)
        if self.budget_by == "hidden":
            a = count(hidden=2) - count(hidden=1)  # parameters are linear in hidden
            guess = max(1, round((budget - count(hidden=1)) / a) + 1)
            if guess > MAX_BUDGET_HIDDEN:  # a typo such as 10^12 would otherwise build a network of terabytes
                raise SpecError("param_budget", budget, f"at most {count(hidden=MAX_BUDGET_HIDDEN):,} for this run "
                                f"(hidden up to {MAX_BUDGET_HIDDEN:,}; run {self.branch} k{self.kernel}, "
                                f"{self.blocks} blocks, width {self.width})")
            options = {h: count(hidden=h) for h in range(max(1, guess - 1), guess + 2)}
        else:
            options = {w: count(width=w) for w in range(1, MAX_BUDGET_WIDTH + 1)}
        best = min(options, key=lambda v: (abs(options[v] - budget), v))
        if abs(options[best] - budget) > BUDGET_TOLERANCE * budget:
            raise SpecError("param_budget", budget, f"a count within {BUDGET_TOLERANCE:.0%} of what {self.budget_by} "
                            f"can reach for this run (closest: {options[best]} parameters at {self.budget_by} "
                            f"{best}; run {self.branch} k{self.kernel}, {self.blocks} blocks)")
        given = getattr(self, self.budget_by)
        if self.budget_by == "hidden" and given is not None and given != best:
            raise SpecError("hidden", given, f"null: param_budget {budget} chooses it ({best})")
        object.__setattr__(self, self.budget_by, best)

    def replace_unchecked(self, **changes) -> "RunConfig":
        """A copy with `changes` and without a budget (so that sizes can be tried while one is being met)."""
        return replace(self, param_budget=None, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "RunConfig":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        allowed = field_names()
        for key in values:
            if key not in allowed:
                raise SpecError(key, values[key], "a run field: " + ", ".join(allowed))
        return cls(**values)

    def pack_key(self) -> tuple:
        """Runs with equal keys share a network shape and a training loop, so they can train as one pack.
        Per-model within a pack: seed (weights and data order), lr, weight decay, augmentation, the weights it
        starts from, and a fixed residual scale λ (a per-model buffer); a learnable scale is a parameter, so it
        is part of the shape. Fields at their neutral value are left out, as from run ids, so that adding a field
        keeps the pack sizes calibrated for a shape (the store keys them by this)."""
        values = canonical_config(self.to_dict())
        for per_model in ("seed", "lr", "weight_decay", "augment", "init_from"):
            values.pop(per_model, None)
        values["residual_scale"] = "learnable" if self.residual_scale == "learnable" else "fixed"
        if self.cropped:  # the shape follows from this run's own mask: it trains alone
            values["seed"], values["run"] = self.seed, canonical_json(canonical_config(self.to_dict()))
        return tuple(sorted((k, str(v)) for k, v in values.items()))

    @property
    def pruned(self) -> bool:
        """Whether pruning changes anything (density 1 is the dense network exactly)."""
        return self.prune != "none" and self.density < 1

    @property
    def cropped(self) -> bool:
        return self.pruned and self.prune_structure == "crop"


def canonical_scale(value):
    """A valid residual_scale in one spelling: a rule of `SCALE_RULES` (spaces removed), or a number as a float;
    any spelling of 1 (1, 1.0, "1.0") is the rule "1"."""
    if isinstance(value, str):
        rule = value.replace(" ", "")
        if rule in SCALE_RULES:
            return rule
        value = float(rule)
    value = float(value)
    return "1" if value == 1.0 else value


def field_names() -> list[str]:
    return [f.name for f in fields(RunConfig)]


def list_fields() -> tuple[str, ...]:
    """The run fields whose one value may itself be a list, as their type declares (`hidden`: one width per
    block, a tuple once validated)."""
    return tuple(f.name for f in fields(RunConfig) if "tuple" in str(f.type))


def neutral() -> Mapping:
    """{field: neutral value} of the run fields declared with `added`: what run ids leave out. For modules that
    import this one only where they need it (it brings torch); the others may ask `records.neutral_defaults()`."""
    return neutral_defaults()


def _round_up(value: float, digits: int = 3) -> str:
    """`value` rounded up to `digits` significant digits: a floor that, written as shown, is still allowed."""
    scale = 10.0 ** (math.floor(math.log10(value)) - digits + 1)
    return f"{math.ceil(value / scale - 1e-9) * scale:.{digits}g}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
