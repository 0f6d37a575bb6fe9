"""The residual expansion: a deep stack written as a sum of terms of increasing order.

For x_k = x_{k-1} + R_k(x_{k-1}) with R_k = s_k·F_k (s_k = λ·α_k), starting from the stem output x:

    x_n = x + Σ_k R_k(x) + Σ_{i<k} J_{R_k}(x)·R_i(x) + O(s³)
        = x + T1 + T2 + ...

T1 is exactly what the parallel (shallow) network adds to x; T2 is the first correction the deep wiring makes.
T2 needs Jacobian-vector products only: J_{R_k}(x)·(Σ_{i<k} R_i(x)), one forward-mode `torch.func.jvp` per
block, applied to the running sum of the earlier first-order terms.

The unit of the expansion is a layer of `model.layers` (one block in a sequential model, a stage of parallel
branches in a `groups:g` model); for a parallel model T1 is exact and T2 = 0.

BatchNorm is put in eval mode for the whole analysis: in train mode a block's output depends on the rest of
the batch, and the expansion is one of per-example maps. The model's mode is restored afterwards.

Paths: unravelled, a stack of n blocks is 2^n paths, C(n, k) of them through k blocks (the path length is
Binomial(n, ½)). `expansion_by_order` splits x_n by path length exactly when the branches are affine
(act=identity, norm none or batch in eval mode): order k = Σ_{i1<...<ik} R_{ik}∘...∘R_{i1} with the constant
part of each affine map entering at order 1. For nonlinear branches orders 0-2 are the Taylor terms above;
orders ≥ 3 there use the Jacobians at x only (curvature is left out), so they are an approximation and the
orders no longer sum to x_n — `path_contributions` says so and reports by how much.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
from torch import nn
from torch.func import jvp

from depthlab.errors import DepthlabError
from depthlab.models import ModelSpec, ResidualNet, build


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode (BatchNorm on its running statistics) inside the block, the previous mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _check_single(model: ResidualNet) -> None:
    if getattr(model, "models", 1) != 1:
        raise DepthlabError(f"the expansion analyses one model; this is a pack of {model.models} "
                            "(use depthlab.models.unpack)")


def _typed(model: ResidualNet, inputs: torch.Tensor) -> torch.Tensor:
    ref = next(model.parameters())
    return inputs.to(device=ref.device, dtype=ref.dtype)


def head(model: ResidualNet, stream: torch.Tensor) -> torch.Tensor:
    """Logits (B, classes) of a single model from a residual stream (B, C, H, W)."""
    return model.head(stream)[0]


def rms(t: torch.Tensor) -> float:
    """Per-example L2 norm, root-mean-square over the batch (‖t‖_F / √B)."""
    return (t.norm() / math.sqrt(t.shape[0])).item()


def rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a − ref‖ / ‖ref‖ over the whole batch."""
    return ((a - ref).norm() / ref.norm()).item()


def _jvp(fn, primal: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        # torch's first forward-mode call registers decompositions through the deprecated torch.jit.script
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        return jvp(fn, (primal,), (tangent,))[1]


# ---------------------------------------------------------------------------------------------- expansion


@torch.no_grad()
def expansion_terms(model: ResidualNet, inputs: torch.Tensor) -> dict:
    """The zeroth-, first- and second-order terms of `model`'s residual stream on `inputs`, and how well each
    truncation reproduces the true stream and logits.

    Returns tensors `stream` (x, the stem output), `output` (x_n), `first` (T1), `second` (T2), and floats:
    `norm_*` (per-example norm, RMS over the batch, of stream/output/first/second), `err_zeroth|first|second`
    (‖x_n − truncation‖/‖x_n‖ for x, x+T1, x+T1+T2) and `logit_err_*` (the same with the head applied to the
    truncation and to x_n). BatchNorm runs in eval mode."""
    _check_single(model)
    with eval_mode(model):
        x = model.stem(_typed(model, inputs))
        out, first, second = x, torch.zeros_like(x), torch.zeros_like(x)
        for layer in model.layers:
            out = layer(out)
            second += _jvp(layer.residual, x, first)  # J_{R_k}(x)·Σ_{i<k} R_i(x); zero for the first layer
            first += layer.residual(x)
        truncations = {"zeroth": x, "first": x + first, "second": x + first + second}
        logits = head(model, out)
        result = {"stream": x, "output": out, "first": first, "second": second,
                  "norm_stream": rms(x), "norm_output": rms(out), "norm_first": rms(first),
                  "norm_second": rms(second), "norm_logits": rms(logits)}
        for name, approx in truncations.items():
            result[f"err_{name}"] = rel(approx, out)
            result[f"logit_err_{name}"] = rel(head(model, approx), logits)
    return result


SUMMARY_KEYS = ("norm_stream", "norm_output", "norm_first", "norm_second", "err_zeroth", "err_first",
                "err_second", "logit_err_zeroth", "logit_err_first", "logit_err_second")


def expand_table(spec: ModelSpec, inputs: torch.Tensor, scales=("1", "1/sqrt(n)", "1/n"),
                 depths=(2, 4, 8, 16, 32), seed: int = 0, dtype=torch.float64, progress=None) -> list[dict]:
    """One row per (λ rule, depth): a fresh sequential model of `spec` with that many blocks and that
    residual scale (seeded, so rows differ only in λ and n), and the float summary of `expansion_terms`.

    float64 by default: at small λ the second-order error is far below float32's resolution of x_n."""
    from depthlab.run.progress import progress_bar

    rows = []
    combos = [(s, n) for s in scales for n in depths]
    for scale, n in progress_bar(combos, desc="expand", enabled=progress):
        model_spec = spec.replace(blocks=int(n), residual_scale=scale, topology="sequential")
        model = build(model_spec, seed=seed).to(dtype)
        terms = expansion_terms(model, inputs)
        rows.append({"scale": str(scale), "blocks": int(n), "lambda": model_spec.scale,
                     **{k: terms[k] for k in SUMMARY_KEYS}})
    return rows


# ---------------------------------------------------------------------------------------------- orders


@torch.no_grad()
def expansion_by_order(model: ResidualNet, inputs: torch.Tensor, max_order: int | None = None) -> list[torch.Tensor]:
    """[order 0, order 1, ..., order K] terms of the residual stream (K = max_order, at most the number of
    layers), by dynamic programming over the layers:

        after layer j:  term[k] += J_{R_j}(x)·term[k-1]   (k ≥ 2, with the terms before layer j)
                        term[1] += R_j(x)                  (= A_j x + c_j: the linear and the constant part)

    Exact for affine branches, where J_{R_j}(x) = A_j everywhere: then Σ_k term[k] = x_n when K = n. For
    nonlinear branches orders 0-2 equal x, T1, T2 of `expansion_terms` and higher orders use the Jacobians at x.
    Each k ≥ 2 step is one JVP with the K−1 tangents stacked along the batch (the maps are per-example)."""
    _check_single(model)
    n = len(model.layers)
    max_order = n if max_order is None else min(int(max_order), n)
    if max_order < 0:
        raise DepthlabError(f"max_order must be >= 0; got {max_order}")
    with eval_mode(model):
        x = model.stem(_typed(model, inputs))
        b = x.shape[0]
        terms = [x] + [torch.zeros_like(x) for _ in range(max_order)]
        for j, layer in enumerate(model.layers):
            top = min(max_order, j + 1)  # after j+1 layers no path is longer than j+1
            if top >= 2:
                tangents = torch.cat(terms[1:top])  # orders 1..top-1, the terms before layer j
                primal = x.repeat(top - 1, *([1] * (x.dim() - 1)))
                pushed = _jvp(layer.residual, primal, tangents).split(b)
                for k in range(2, top + 1):
                    terms[k] = terms[k] + pushed[k - 2]
            if max_order >= 1:
                terms[1] = terms[1] + layer.residual(x)
    return terms


def is_affine(model: ResidualNet) -> bool:
    """Whether every branch is an affine map of its input in eval mode (so the order split is exact)."""
    spec = model.spec
    return spec.act == "identity" and spec.norm in ("none", "batch")


def path_counts(n: int) -> list[int]:
    """C(n, k), k = 0..n: the number of paths through exactly k of n blocks."""
    return [math.comb(n, k) for k in range(n + 1)]


def path_length_distribution(n: int) -> list[float]:
    """P(path length = k) = C(n, k) / 2^n, k = 0..n: Binomial(n, ½), the unravelled view's path lengths."""
    return [c / 2 ** n for c in path_counts(n)]


@torch.no_grad()
def path_contributions(model: ResidualNet, inputs: torch.Tensor, max_order: int | None = None) -> dict:
    """The residual stream split by path length: per order k, the number of paths C(n, k), their share of all
    paths, and the measured norm of the order-k term (per example, RMS over the batch) and of its logits'
    share (head applied to x + orders ≤ k, relative error against the true logits).

    `exact` is True for affine branches (the orders sum to x_n); for nonlinear ones the orders ≥ 3 are the
    linearised approximation described in this module, and `note` says so. `residual` = ‖x_n − Σ_k term_k‖/‖x_n‖
    measures what the listed orders miss."""
    n = len(model.layers)
    terms = expansion_by_order(model, inputs, max_order)
    with eval_mode(model):
        out = model.features(_typed(model, inputs))
        logits = head(model, out)
        partial, rows = torch.zeros_like(out), []
        for k, term in enumerate(terms):
            partial = partial + term
            rows.append({"order": k, "paths": math.comb(n, k), "path_share": math.comb(n, k) / 2 ** n,
                         "norm": rms(term), "err_through_order": rel(partial, out),
                         "logit_err_through_order": rel(head(model, partial), logits)})
    exact = is_affine(model)
    note = ("exact: the branches are affine, so the orders are the paths of each length" if exact else
            "approximate: the branches are nonlinear; orders 0-2 are the Taylor terms (x, T1, T2), orders >= 3 "
            "use the Jacobians at the stem output only")
    if len(terms) - 1 < n:
        note += f"; orders above {len(terms) - 1} were not computed"
    return {"blocks": n, "orders": rows, "exact": exact, "note": note, "residual": rel(partial, out)}
