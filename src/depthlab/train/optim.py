"""A small fused optimizer for packs: every model keeps its own learning rate and weight decay.

Each packed parameter is viewed as (M, -1) — row m is model m (see `depthlab.models.layers`) — so per-model
hyper-parameters are (M, 1) column vectors and one update serves the whole pack. A model that has diverged is
frozen with `torch.where` (a multiplication by 0 would keep its NaNs alive in the arithmetic).

- adam: AdamW (Loshchilov & Hutter): decoupled weight decay, bias-corrected moments.
- sgd:  SGD with Nesterov momentum, L2 weight decay added to the gradient.
Weight decay applies to the tensors the model declares decaying (`ResidualNet.parameter_groups`: convolution and
classifier weights, every branch type's as it declares them), not to norms, biases or branch scales.
"""

from __future__ import annotations

import torch
from torch import nn


def decays(model: nn.Module) -> dict[str, bool]:
    """{parameter name: whether weight decay acts on it}, as the model declares its groups."""
    return {name: decay for name, _, decay, _ in model.parameter_groups()}


class PackedOptimizer:
    """`momentum` (sgd), `betas` and `eps` (adam) have no defaults: the recipe's table holds them
    (`depthlab.train.recipe`), and the engine passes them."""

    def __init__(self, model: nn.Module, models: int, *, kind: str, lr, weight_decay, momentum: float, betas,
                 eps: float):
        self.models, self.kind, self.momentum, self.betas, self.eps = models, kind, momentum, betas, eps
        ref = next(model.parameters())
        self.lr = torch.as_tensor(lr, dtype=torch.float32, device=ref.device).reshape(models, 1)
        wd = torch.as_tensor(weight_decay, dtype=torch.float32, device=ref.device).reshape(models, 1)
        decay = decays(model)
        self.params = [(p, wd if decay[name] else torch.zeros_like(wd))
                       for name, p in model.named_parameters() if p.requires_grad]
        self.state = [{} for _ in self.params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p, _ in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0, active: torch.Tensor | None = None) -> None:
        """One update; `active` (M bools) freezes the models that are False."""
        self.steps += 1
        lr = self.lr * lr_factor
        keep = None if active is None else active.reshape(self.models, 1)
        for (p, wd), state in zip(self.params, self.state):
            if p.grad is None:
                continue
            w = p.view(self.models, -1)
            g = p.grad.reshape(self.models, -1).float()
            if self.kind == "adam":
                b1, b2 = self.betas
                m = state.setdefault("m", torch.zeros_like(g))
                v = state.setdefault("v", torch.zeros_like(g))
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = m / (1 - b1 ** self.steps)
                v_hat = v / (1 - b2 ** self.steps)
                update = m_hat / (v_hat.sqrt() + self.eps) + wd * w.float()
            else:
                g = g + wd * w.float()
                buf = state.setdefault("buf", torch.zeros_like(g))
                buf.mul_(self.momentum).add_(g)
                update = g + self.momentum * buf
            new = w.float() - lr * update
            if keep is not None:
                new = torch.where(keep, new, w.float())
            w.copy_(new.to(w.dtype))
