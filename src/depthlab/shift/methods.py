"""Test-time methods: what a trained network does with a stream of test batches under covariate shift.

Each method wraps a COPY of the trained model (the stored weights never change) and is called batch by batch;
it returns that batch's logits. The stream is online: an adapting method keeps what it learnt for the next
batch, unless episodic (reset before every batch).

- `source`: the model in eval mode (BN with its training statistics).
- `norm`: BN with the test batch's statistics (α-BN at α = 1; see `depthlab.shift.bn`).
- `alpha_bn`: BN with the mix (1-α)·source + α·batch, α = 0.1 by default (You, Li & Zhao, arXiv 2110.04065).
- `tent`: TENT (Wang et al., ICLR 2021; `DequanWang/tent`, tent.py): BN on batch statistics (train-mode BN,
  biased variance), only the BN affine parameters trained, by Adam (lr 1e-3, betas (0.9, 0.999), no weight
  decay) on the mean prediction entropy, one step per batch. The logits returned are those of the forward pass
  that the step is computed from, i.e. from before the step (as `forward_and_adapt` returns them).
- `core_reconstructed`: the α-BN paper's online "Core" loss on pairwise class correlations, whose exact formula
  we could not find in any public copy. This is our documented reconstruction, named so wherever it appears:
  on top of α-BN, minimise the off-diagonal mass of the row-normalised batch class-correlation matrix
  C = PᵀP/B (P: the batch's softmax predictions, B×K), i.e. mean_i Σ_{j≠i} C_ij / Σ_j C_ij, over the BN affine
  parameters with TENT's optimiser and one step per batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from depthlab.choices import SHIFT_METHODS
from depthlab.errors import SpecError
from depthlab.shift.bn import mixed_layers, with_mixed_bn

METHODS = tuple(SHIFT_METHODS)  # the names, in order: depthlab.choices declares them, and what each does
ADAPTIVE = ("tent", "core_reconstructed")  # the methods that take optimiser steps
WITH_ALPHA = ("alpha_bn", "core_reconstructed")  # the methods whose α is a setting
DEFAULT_ALPHA = 0.1
TENT_LR = 1e-3
EPISODIC = "_episodic"  # the label suffix of an adaptive method reset before every batch


@dataclass(frozen=True)
class Method:
    """A test-time method with its settings. `alpha` is the weight on the test batch's statistics that the
    method normalises with (source 0, norm and tent 1, alpha_bn and core_reconstructed their setting)."""

    name: str
    alpha: float = DEFAULT_ALPHA
    episodic: bool = False
    lr: float = TENT_LR

    def __post_init__(self):
        if self.name not in METHODS:
            raise SpecError("method", self.name, ", ".join(METHODS))
        fixed = {"source": 0.0, "norm": 1.0, "tent": 1.0}
        alpha = fixed.get(self.name, self.alpha)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise SpecError("alpha", self.alpha, "a number from 0 to 1 (the weight on the test batch's statistics)")
        object.__setattr__(self, "alpha", float(alpha))
        if self.episodic and self.name not in ADAPTIVE:
            object.__setattr__(self, "episodic", False)  # nothing to reset: the same method

    @property
    def stored_name(self) -> str:
        """The method as a store row names it (its α is a column of its own)."""
        return self.name + (EPISODIC if self.episodic else "")

    @property
    def label(self) -> str:
        """The method as comparisons name it: its α included where α is a setting (e.g. alpha_bn:0.1)."""
        return self.stored_name + (f":{self.alpha:g}" if self.name in WITH_ALPHA else "")


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-example entropy of the softmax of `logits` (B×K)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def class_correlation_loss(logits: torch.Tensor) -> torch.Tensor:
    """`core_reconstructed`'s loss: C = PᵀP/B of the softmax predictions, each row normalised to sum 1; the
    mean over rows of the mass off the diagonal (0 when every example is confidently one class)."""
    p = logits.softmax(1)
    c = p.t() @ p / p.shape[0]
    rows = c / c.sum(1, keepdim=True).clamp_min(torch.finfo(c.dtype).tiny)
    return 1 - rows.diagonal().mean()


class TestTimeModel:
    """`method` applied to a copy of `model`: call it on each test batch (normalised inputs) for the logits."""

    __test__ = False  # not a pytest test class

    def __init__(self, model: nn.Module, method: Method):
        self.method = method
        # tent normalises like train-mode BN (biased variance); the other methods use the unbiased one
        self.model = with_mixed_bn(model, method.alpha, unbiased=method.name != "tent")
        self.model.requires_grad_(False)
        self.optimizer = None
        if method.name in ADAPTIVE:
            params = []
            for layer in mixed_layers(self.model):
                params += [p for p in (layer.weight, layer.bias) if p is not None]
            for p in params:
                p.requires_grad_(True)
            self.optimizer = torch.optim.Adam(params, lr=method.lr, betas=(0.9, 0.999), weight_decay=0.0)
            self.initial = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()))

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        if self.method.name == "tent":
            return softmax_entropy(logits).mean(0)
        return class_correlation_loss(logits)

    def reset(self) -> None:
        """Back to the state before the first batch (model and optimiser)."""
        if self.optimizer is not None:
            self.model.load_state_dict(self.initial[0])
            self.optimizer.load_state_dict(self.initial[1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.optimizer is None:
            with torch.no_grad():
                return self.model(x)
        if self.method.episodic:
            self.reset()
        with torch.enable_grad():
            logits = self.model(x)
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(logits).backward()
            self.optimizer.step()
        return logits.detach()

    def each_example_alone(self, on: bool = True) -> None:
        """Normalise each example of a batch with its own statistics, as a batch of one would be (only for a method
        that does not adapt: an adaptive one carries what each batch taught it to the next)."""
        if on and self.optimizer is not None:
            raise ValueError(f"{self.method.name} adapts batch by batch: its batches of one cannot be taken together")
        for layer in mixed_layers(self.model):
            layer.per_example = on

    def adapted_parameters(self) -> dict[str, torch.Tensor]:
        """The parameters an adaptive method trains (BN weight and bias), by name."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}
