"""`ModelSpec`: the typed, validated description of one residual CNN.

Its fields are those a run chooses (`ModelFields`: declared and validated here once, and composed by the run config
`depthlab.spec.config.RunConfig`) and those its dataset decides (input channels, classes, input size).

A network is "a stack of layers of the same dimension": a 3x3 stem to width C, then n residual blocks of width C,
then a head. The blocks are wired by `topology`:

- ``sequential``: x_i = x_{i-1} + λ·F_i(x_{i-1})          (deep)
- ``parallel``:   y   = x + λ·Σ_i F_i(x)                  (shallow; one broad layer)
- ``groups:g``:   g stages in sequence, each a parallel layer of n/g branches (g = n is sequential, g = 1 parallel)

`branch` chooses what a block is made of (`depthlab.models.branches`): `conv`, two k×k convolutions, or `lk`, a
depthwise K×K convolution (optionally UniRepLKNet's dilated re-parameterisation, `reparam`) and a pointwise pair.

`skip=False` drops the identity from every layer (x_i = λ·F_i(x_{i-1}) for the deep stack): the plain network
that lesion studies contrast with the residual one, trained by the same engine as every other run.

Every topology with the same (C, n, k, hidden) has exactly the same parameters and FLOPs.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace

# the choice lists live in depthlab.choices, which the CLI reads without importing torch
from depthlab.choices import (ACTS, BRANCH_TYPES, HEADS, INITS, NORMS, REPARAMS, SCALE_RULES, STEM_STRIDES,
                              check)
from depthlab.errors import SpecError
from depthlab.models.branches import BRANCHES, DILATED_BRANCHES
from depthlab.records import added

RESIDUAL_SCALES = (*SCALE_RULES, "<number>")
TOPOLOGIES = "sequential, parallel or groups:g with g dividing blocks"

_GROUPS = re.compile(r"^groups:(\d+)$")


@dataclass(frozen=True)
class ModelFields:
    """The network fields a run chooses, with their defaults and their validation. Those added after the first
    release are `added`: their default reproduces the networks from before they existed, and run ids leave it
    out (depthlab.records)."""

    width: int = 16                  # C: channels of the residual stream
    blocks: int = 2                  # n: residual blocks (branches)
    kernel: int = 3                  # k: odd kernel size of both convolutions of a branch
    hidden: int | tuple | None = None  # hidden channels of a branch (default: width), or one per block
    topology: str = "sequential"
    residual_scale: str | float = "1"
    norm: str = "batch"
    head: str = "gap"
    act: str = "relu"
    init: str = "default"
    stem_stride: int = 1
    skip: bool = added(True)         # identity connections; False: the plain control x_i = λ·F_i(x_{i-1})
    branch: str = added("conv")      # conv: conv_k(act(norm(conv_k))); lk: pw(act(pw(norm(dw_K)))), K = kernel
    reparam: str = added("none")     # lk's depthwise K×K: none, dilated (UniRepLKNet), same_kernel, same_equivalent

    def __post_init__(self):
        self._check_sizes()
        self._check_choices()
        self._check_branch_type()
        self._check_skip_and_scale()

    def _check_sizes(self) -> None:
        """width, blocks, hidden (a list of widths becomes a tuple) and kernel."""
        for name in ("width", "blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(name, value, "a positive integer")
        if isinstance(self.hidden, list):
            object.__setattr__(self, "hidden", tuple(self.hidden))  # hashable, like every other field
        widths = self.hidden if isinstance(self.hidden, tuple) else (self.hidden,)
        if self.hidden is not None and (not widths or any(not isinstance(h, int) or isinstance(h, bool) or h < 1
                                                          for h in widths)):
            raise SpecError("hidden", self.hidden, "a positive integer, a list of one per block, or null (= width)")
        if isinstance(self.hidden, tuple) and len(self.hidden) != self.blocks:
            raise SpecError("hidden", list(self.hidden), f"one width per block ({self.blocks} blocks)")
        if not isinstance(self.kernel, int) or isinstance(self.kernel, bool) or self.kernel % 2 == 0 \
                or not 1 <= self.kernel <= 31:
            raise SpecError("kernel", self.kernel, "an odd integer from 1 to 31")

    def _check_choices(self) -> None:
        """The fields whose values come from a list (and the topology and the residual scale, read as rules)."""
        check("norm", self.norm, NORMS)
        check("act", self.act, ACTS)
        check("head", self.head, HEADS)
        check("init", self.init, INITS)
        if isinstance(self.stem_stride, bool) or self.stem_stride not in STEM_STRIDES:  # True == 1 in Python
            raise SpecError("stem_stride", self.stem_stride, " or ".join(map(str, STEM_STRIDES)))
        self.stages  # validates topology
        self.scale  # validates residual_scale
        check("branch", self.branch, BRANCH_TYPES)
        check("reparam", self.reparam, REPARAMS)

    def _check_branch_type(self) -> None:
        """What the branch type allows: its re-parameterisations, their kernels, its per-branch widths."""
        kind = BRANCHES[self.branch]  # what the branch type declares, rather than tests of its name
        if self.reparam not in kind.reparams:
            others = ", ".join(name for name, other in BRANCHES.items() if len(other.reparams) > 1)
            raise SpecError("reparam", self.reparam, f"{', '.join(kind.reparams)} for branch {self.branch} "
                            f"(the branch types with re-params: {others})")
        if self.reparam != "none" and self.kernel not in DILATED_BRANCHES:
            raise SpecError("kernel", self.kernel, f"one of {', '.join(map(str, DILATED_BRANCHES))} with reparam "
                            f"{self.reparam} (UniRepLKNet's table), or reparam none")
        why = kind.equal_widths(self.norm)
        if isinstance(self.hidden, tuple) and why:
            for stage in range(self.stages):
                if len(set(self.layer_hidden(stage))) > 1:
                    raise SpecError("hidden", list(self.hidden), "equal widths for the branches of each layer with "
                                    f"branch {self.branch} and norm {self.norm} (layer {stage} has "
                                    f"{list(self.layer_hidden(stage))}): {why}")

    def _check_skip_and_scale(self) -> None:
        """skip, and the residual scales and inits that would leave a network no gradient."""
        if not isinstance(self.skip, bool):
            raise SpecError("skip", self.skip, "true (residual) or false (the plain network, no identity)")
        if not self.skip and self.learnable_scale:
            raise SpecError("init" if self.init != "default" else "residual_scale",
                            self.init if self.init != "default" else self.residual_scale,
                            "init default and a fixed residual_scale when skip is false (a branch scale that "
                            "starts at 0 would start the plain network at a constant output, with no gradient)")
        if self.init == "fixup" and self.residual_scale == "learnable":
            raise SpecError("init", self.init, "default or skipinit when residual_scale is learnable "
                            "(fixup zeroes the last conv; a zero scale on top would leave no gradient)")

    @property
    def hidden_channels(self) -> int:
        """The hidden width of every block; for per-block widths, their mean (rounded up)."""
        widths = self.block_hidden
        return -(-sum(widths) // len(widths))

    @property
    def block_hidden(self) -> tuple[int, ...]:
        """The hidden width of each block, in block order."""
        if isinstance(self.hidden, tuple):
            return self.hidden
        return (self.hidden or self.width,) * self.blocks

    def layer_hidden(self, stage: int) -> tuple[int, ...]:
        """The widths of the branches of layer `stage` (block i lives in layer i // branches_per_stage)."""
        b = self.branches_per_stage
        return self.block_hidden[stage * b:(stage + 1) * b]

    @property
    def stages(self) -> int:
        """g: the number of layers in sequence (each holds blocks/g parallel branches)."""
        if self.topology == "sequential":
            return self.blocks
        if self.topology == "parallel":
            return 1
        match = _GROUPS.match(str(self.topology))
        if match and int(match.group(1)) >= 1 and self.blocks % int(match.group(1)) == 0:
            return int(match.group(1))
        raise SpecError("topology", self.topology, f"{TOPOLOGIES} (blocks={self.blocks})")

    @property
    def branches_per_stage(self) -> int:
        return self.blocks // self.stages

    @property
    def learnable_scale(self) -> bool:
        """Whether each block carries a trainable multiplier α (ReZero/SkipInit/Fixup style)."""
        return self.residual_scale == "learnable" or self.init in ("skipinit", "fixup")

    @property
    def scale(self) -> float:
        """The fixed λ (1.0 when the scale is learnable: then α alone scales the branch)."""
        rule, n = self.residual_scale, self.blocks
        if isinstance(rule, bool):
            raise SpecError("residual_scale", rule, ", ".join(RESIDUAL_SCALES))
        if isinstance(rule, (int, float)):
            if not math.isfinite(rule):
                raise SpecError("residual_scale", rule, ", ".join(RESIDUAL_SCALES))
            return float(rule)
        rule = str(rule).replace(" ", "")
        if rule in ("1", "learnable"):
            return 1.0
        if rule == "1/sqrt(n)":
            return 1.0 / math.sqrt(n)
        if rule == "1/n":
            return 1.0 / n
        try:
            value = float(rule)
        except ValueError:
            raise SpecError("residual_scale", self.residual_scale, ", ".join(RESIDUAL_SCALES)) from None
        if not math.isfinite(value):
            raise SpecError("residual_scale", self.residual_scale, ", ".join(RESIDUAL_SCALES))
        return value

    @property
    def alpha_init(self) -> float:
        return 1.0 if self.init == "fixup" else 0.0


@dataclass(frozen=True)
class ModelSpec(ModelFields):
    """A network: the fields a run chooses and those its dataset decides."""

    in_channels: int = 1
    num_classes: int = 10
    input_size: int = 28

    def __post_init__(self):
        for name in ("in_channels", "num_classes", "input_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(name, value, "a positive integer")
        super().__post_init__()

    @property
    def feature_size(self) -> int:
        """Spatial size after the stem (3x3, padding 1, stride s)."""
        return (self.input_size - 1) // self.stem_stride + 1

    def replace(self, **changes) -> "ModelSpec":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        for key in values:
            if key not in known:
                raise SpecError(key, values[key], "a ModelSpec field: " + ", ".join(sorted(known)))
        return cls(**values)
