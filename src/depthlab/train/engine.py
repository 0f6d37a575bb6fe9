"""The engine: trains a pack of runs that share a network shape as ONE module. It is depthlab's only trainer:
sweeps, the plain (no-skip) control of a lesion study and the fine-tuning after a conversion all train here.

Each model of the pack keeps its own seed (initial weights and data order), learning rate, weight decay and
augmentation; a model whose loss turns NaN/inf is frozen and recorded as `diverged` while its pack-mates carry
on. The precision (`depthlab.precision`: float32, or bf16 autocast where the device has native bf16) is the
caller's choice and recorded; float32 is what the tests check against one-model-at-a-time training. So is the
activations' layout (`use_channels_last`): by default channels_last on CUDA, and on the CPU in bf16 or for branch
types that declare it (large depthwise kernels), measured faster there (`bench/cpu_throughput.py`,
`bench/lk_speed.py`); NCHW for float32 on the CPU, whose weights are then the same bit for bit on any number of
intra-op threads. A pack may be `torch.compile`d.

Metrics, per epoch: `train_loss`/`train_acc` are the running means over that epoch's minibatches (train mode,
augmented data); `val_loss`/`val_acc` are measured in eval mode on the whole validation split; `seconds` is the
epoch's wall time and `train_seconds` the part spent in the training steps (validation excluded), both
for the whole pack (every model of a pack reports the same times: sum over packs, not over runs). Final metrics
(`final`): validation and test loss/accuracy measured in eval mode on the whole split after training, train
loss/accuracy likewise on the first `train_eval_examples` training examples (all of a smaller training set; the
count is recorded as the environment's `train_eval_examples`), and the geometric complexity (mean
‖∂logits/∂input‖_F², Dherin et al.) over the first `complexity_examples` training examples unless it is turned off
(recorded as `complexity`), all measured by `depthlab.measure` at the run's precision (the complexity in float32).
`RECIPE` versions all of this, and its table (`depthlab.train.recipe.TABLE`: those counts, the optimizer's and the
schedule's constants, the augmentation's shifts) holds every constant the engine trains and measures with; each
run records it (the environment's `recipe_table`).
"""

from __future__ import annotations

import functools
import gc
import itertools
import os
import platform
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import depthlab
from depthlab import __version__
from depthlab.measure import EVAL_BATCH, effective_receptive_field, evaluate, geometric_complexity
from depthlab.models import build, pack, param_count, q_ratio, receptive_field, spec_params, unpack
from depthlab.models.branches import branch_type
from depthlab.models.pack import same_shape
from depthlab import precision as precisions
from depthlab import prune
from depthlab.records import finite
from depthlab.train import recipe
from depthlab.spec.config import RunConfig
from depthlab.train.optim import PackedOptimizer
from depthlab.errors import SpecError
from depthlab.choices import LAYOUTS, check
from depthlab.train.recipe import RECIPE  # the recipe's version, and its history: depthlab.train.recipe

# Model-images per evaluation forward on a CPU (see evaluation_batch). Speed only, so not in the recipe's table:
# the evaluation batch moves float32 sums of the losses in the 7th digit, as a pack's layout does, and is recorded.
CPU_EVAL_IMAGES = 400


@dataclass
class RunResult:
    config: RunConfig
    status: str                      # done | diverged | failed
    final: dict
    history: list = field(default_factory=list)
    seconds: float = 0.0             # the whole pack's wall time: training, evaluation, complexity
    train_seconds: float = 0.0       # the pack's time in training steps alone (what throughput is judged on)
    params: int = 0
    q: float = 0.0
    env: dict = field(default_factory=dict)
    error: str | None = None
    state_dict: dict | None = None   # the trained single model's weights (CPU), when asked for
    spec: dict | None = None         # its network (ModelSpec.to_dict()) with them: a cropped run's is not its config's


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall-clock reading covers it (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the depthlab checkout this code runs from ("+dirty" with uncommitted changes), or None
    when it is not a git checkout (an installed wheel) or git is missing."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(depthlab.__file__))))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def environment(device: torch.device, pack_size: int, precision: str, compiled: bool, dataset=None,
                **settings) -> dict:
    """Software, hardware, provenance and the execution settings (`settings`: channels_last, ...) of a pack's
    runs. (Runs recorded before precision was a choice have `amp`, "bf16" or "off": `records.precision_of`.)"""
    env = {"depthlab": __version__, "git_commit": git_commit(), "recipe": RECIPE,
           "recipe_table": recipe.TABLE.record(), "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform(), "host": socket.gethostname(),
           "device": describe_device(device), "pack_size": pack_size, "precision": precision,
           "threads": torch.get_num_threads(), "compile": compiled, **settings}
    if dataset is not None:
        env["data_source"] = getattr(dataset, "source", None)
        if not getattr(dataset, "complete", True):
            env["data_complete"] = False
    return env


def bytes_per_model(config: RunConfig, in_channels: int, input_size: int, precision: str) -> int:
    """Rough training memory of one model of a pack: the activations autograd keeps for a batch, plus
    parameters, gradients and optimizer state. Used to choose pack sizes; an OOM still splits the pack."""
    spec = config.model_spec(in_channels=in_channels, input_size=input_size)
    hw = spec.feature_size ** 2
    per_block = branch_type(spec.branch).activations(spec.width, spec.hidden_channels, spec.kernel, spec.norm,
                                                     spec.reparam)  # what its branch type keeps per position
    activations = (spec.width * 2 + spec.blocks * per_block) * hw + in_channels * input_size ** 2
    element = 2 if precision == "bf16" else 4
    return int(1.5 * config.batch_size * activations * element + 16 * spec_params(spec))


def _finite_params(net, models: int) -> torch.Tensor:
    ok = torch.ones(models, dtype=torch.bool, device=next(net.parameters()).device)
    for p in net.parameters():
        ok &= torch.isfinite(p.detach().reshape(models, -1)).all(1)
    return ok


@contextmanager
def cudnn_autotuning(device: torch.device):
    """cuDNN benchmark mode while a pack trains on CUDA, restored afterwards. Every step of a pack has the same
    shapes, so timing the algorithms once pays off (grouped convolutions vary widely between them)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def train_pack(configs: list[RunConfig], dataset, *, device="cpu", **kwargs) -> list[RunResult]:
    """Train `configs` (one pack key) together on `dataset` (a `depthlab.data.Dataset` already on `device`).

    Keywords: `compile`; `on_epoch(i, metrics)`, called after every epoch for the i-th config (a heartbeat for
    the store); `keep_weights`; `initial`: one entry per config, None (initialise from the config's seed) or a
    one-model `ResidualNet` of the config's shape to start from (fine-tuning; the seed still sets the data
    order); `precision` (see `depthlab.precision`: auto, fp32 or bf16; fp32 by default, as the engine always
    computed off CUDA); `layout` (`depthlab.choices.LAYOUTS`, see `use_channels_last`);
    `complexity` (False: skip the geometric complexity, recorded as None); `eval_every` (validate every N-th
    epoch and the last: the epochs between record training metrics only; what the run learns does not change);
    `interrupt()`, called before every training step (raise from it to stop: how a sweep's worker threads stop,
    see depthlab.run.workers)."""
    device = torch.device(device)
    with cudnn_autotuning(device):
        return _train_pack(configs, dataset, device=device, **kwargs)


def _train_pack(configs: list[RunConfig], dataset, *, device: torch.device, compile: bool = False,
                on_epoch=None, keep_weights: bool = False, precision: str = "fp32",
                layout: str = "auto", initial=None, complexity: bool = True, eval_every: int = 1,
                interrupt=None) -> list[RunResult]:
    if len({c.pack_key() for c in configs}) != 1:
        raise ValueError("train_pack() takes configs of one pack key (same shape and training loop)")
    check_eval_every(eval_every)
    check("layout", layout, LAYOUTS)  # before the set-up's work
    precision = precisions.resolve(precision, device)
    c0, models, table = configs[0], len(configs), recipe.TABLE
    start = time.perf_counter()

    # set-up: the starting network (masked or cropped where pruned at initialisation), the layout it computes in,
    # the optimizer and the batches, the training steps and the evaluation
    net, masks, pruning = _starting_pack(configs, dataset, initial, device)
    net.train()
    net.channels_last = channels_last = use_channels_last(device, net.spec, precision, layout)
    forward = torch.compile(net) if compile else net
    optimizer, batches = _optimizer(configs, net, table), _batches(configs, dataset, table)
    steps = _Steps(forward, net, masks, optimizer, functools.partial(table.lr_factor, c0.schedule),
                   max(1, c0.epochs * len(batches)), precision, device, interrupt)
    eval_batch = evaluation_batch(device, c0.batch_size, models)
    measure = functools.partial(evaluate, forward, mean=dataset.mean, std=dataset.std, models=models,
                                precision=precision, batch_size=eval_batch)

    # the epoch loop, until the last epoch or until every model has diverged
    trained = _train_epochs(configs, dataset, steps, batches, measure, on_epoch, eval_every)

    # the final measurements, on the trained weights
    finals = _final_measurements(net, dataset, measure, trained.val, table, c0.batch_size, complexity)
    seconds = time.perf_counter() - start

    # the results, one per config
    env = environment(device, models, precision, compile, dataset, channels_last=channels_last,
                      train_eval_examples=finals.train_eval, complexity=complexity, eval_batch=eval_batch,
                      eval_every=eval_every,
                      **_float32_parts(device, net.spec, precision))
    return _results(configs, net, dataset, trained, finals, pruning, env, seconds, keep_weights)


def _starting_pack(configs, dataset, initial, device) -> tuple:
    """The pack's network before training, on `device`, its pruning masks (None unless masked) and its pruning
    record per model. PreCropping builds the dense, narrower network that the mask's layer densities describe;
    masking keeps the network's shape, with the pruned weights at zero."""
    c0 = configs[0]
    starts, pruning = _starting_models(configs, dataset, initial), {}
    if c0.cropped:
        starts, pruning = _cropped(configs, starts, dataset)
    net = pack(starts).to(device)  # each with its own λ
    masks = _masks(configs, net, dataset, device) if c0.pruned and not c0.cropped else None
    if masks is not None:
        prune.apply_masks(net, masks)
        pruning = _mask_record(net, masks)
    return net, masks, pruning


@dataclass
class _Steps:
    """A pack's training steps, counted over its whole training (`done`: where the schedule is)."""
    forward: object                  # the network, or its compiled wrapper
    net: torch.nn.Module
    masks: dict | None               # pruning masks: their zeros are put back after every step
    optimizer: PackedOptimizer
    lr_factor: object                # the schedule: the learning rate's factor at a fraction of training
    total: int                       # the steps of the whole training
    precision: str
    device: torch.device
    interrupt: object = None         # called before every step (raises to stop)
    done: int = 0

    def epoch(self, batches, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The steps of one epoch's `batches`; per model, the running means of the training loss and accuracy.
        `alive` (M,) loses the models whose loss is no longer finite; the others go on."""
        loss_sum = torch.zeros(len(alive), device=self.device)
        correct = torch.zeros(len(alive), device=self.device)
        seen = 0
        for xb, yb, _ in batches:
            if self.interrupt is not None:
                self.interrupt()
            losses, out = forward_backward(self.forward, xb, yb, alive, self.precision, self.device)
            self.optimizer.step(self.lr_factor(self.done / self.total), active=alive)
            if self.masks is not None:  # pruned weights stay exactly zero: AdamW's update and decay moved them
                prune.apply_masks(self.net, self.masks)
            self.optimizer.zero_grad()
            self.done += 1
            with torch.no_grad():
                loss_sum += losses.detach()
                correct += (out.argmax(-1) == yb).float().mean(1)
            seen += 1
        return loss_sum / max(seen, 1), correct / max(seen, 1)


@dataclass
class _Trained:
    """What the epoch loop leaves: per model whether it is still finite and its history, the last epoch's
    validation loss and accuracy (lists, per model) and the pack's time in training steps."""
    alive: list[bool]
    histories: list[list[dict]]
    val: tuple[list, list]
    train_seconds: float


def _train_epochs(configs, dataset, steps: _Steps, batches, measure, on_epoch, eval_every: int = 1) -> _Trained:
    """Every epoch: the training steps, the models whose weights are no longer finite frozen, validation in eval
    mode on the whole split (every `eval_every`-th epoch, the last, and once every model has diverged), and each
    model's metrics recorded; stops early once every model has diverged."""
    models = len(configs)
    alive = torch.ones(models, dtype=torch.bool, device=steps.device)
    histories: list[list[dict]] = [[] for _ in configs]
    train_seconds = 0.0
    for epoch in range(configs[0].epochs):
        epoch_start = time.perf_counter()
        train_loss, train_acc = steps.epoch(batches.epoch(epoch), alive)
        synchronize(steps.device)
        epoch_train_seconds = time.perf_counter() - epoch_start
        train_seconds += epoch_train_seconds
        alive &= _finite_params(steps.net, models)
        alive_list = alive.tolist()
        if (epoch + 1) % eval_every == 0 or epoch + 1 == configs[0].epochs or not any(alive_list):
            val_loss, val_acc = measure(dataset.val_x, dataset.val_y)
            val = (val_loss.tolist(), val_acc.tolist())
        else:
            val = None  # not validated this epoch
        seconds = time.perf_counter() - epoch_start
        train = (train_loss.tolist(), train_acc.tolist())
        _record_epoch(histories, epoch, train, val, alive_list,
                      {"seconds": seconds, "train_seconds": epoch_train_seconds}, on_epoch)
        if not any(alive_list):
            break
    return _Trained(alive_list, histories, val, train_seconds)


def _record_epoch(histories, epoch: int, train, val, alive: list[bool], times: dict, on_epoch) -> None:
    """Append each model's metrics of `epoch` to its history and report them (`on_epoch(i, metrics)`); a model
    that diverged is recorded once, in the epoch it diverged. An epoch without validation (`val` None) has no
    val_loss and val_acc: absent means not measured, where null means not finite."""
    train_loss, train_acc = train
    for i, history in enumerate(histories):
        if not alive[i] and history and history[-1].get("diverged"):
            continue  # already recorded as diverged
        metrics = {"epoch": epoch + 1, "train_loss": finite(train_loss[i]), "train_acc": train_acc[i]}
        if val is not None:
            metrics.update(val_loss=finite(val[0][i]), val_acc=finite(val[1][i]))
        metrics.update(times)
        if not alive[i]:
            metrics["diverged"] = True
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(i, metrics)


@dataclass
class _Finals:
    """The final measurements of a pack's models, lists over its models."""
    splits: dict                     # {"val" | "train" | "test": (losses, accuracies)}
    erf: list                        # (erf50, erf90) per model
    complexity: list                 # the geometric complexity, or None per model when it is off
    train_eval: int                  # the training examples the train split's metrics cover


def _final_measurements(net, dataset, measure, val, table, batch_size: int, complexity: bool) -> _Finals:
    """After training, in eval mode: loss and accuracy on the validation split (the last epoch's pass saw the
    final weights already), on the first `train_eval_examples` training examples and on the test split; the
    effective receptive field, and the geometric complexity unless it is off."""
    splits = {"val": val}
    train_eval = min(table.train_eval_examples, int(dataset.train_x.shape[0]))
    for split, (x, y) in {"train": (dataset.train_x[:train_eval], dataset.train_y[:train_eval]),
                          "test": (dataset.test_x, dataset.test_y)}.items():
        loss, acc = measure(x, y)
        splits[split] = (loss.tolist(), acc.tolist())
    # float32 with the graph kept: chunks of half a training batch stay within the training memory (bf16)
    erf = effective_receptive_field(net, dataset.train_x[:table.erf_examples], dataset.mean, dataset.std).tolist()
    gc_values = [None] * net.models
    if complexity:
        gc_values = geometric_complexity(net, dataset.train_x[:table.complexity_examples], dataset.mean,
                                         dataset.std, net.models, batch_size=max(1, batch_size // 2)).tolist()
    return _Finals(splits, erf, gc_values, train_eval)


def _results(configs, net, dataset, trained: _Trained, finals: _Finals, pruning: dict, env: dict, seconds: float,
             keep_weights: bool) -> list[RunResult]:
    """One RunResult per config: its final metrics and history with the pack's times, sizes and environment, and
    its trained weights (CPU) when they are kept."""
    models, spec = len(configs), net.spec
    params = param_count(net) // models
    # the inference parameters (what param_budget aims at: BN folded, kernels merged) and the theoretical
    # receptive field (input pixels)
    counts = {"inference_params": spec_params(spec, merged=True), "receptive_field": receptive_field(spec)}
    q = q_ratio(spec, int(dataset.train_x.shape[0]))
    singles = unpack(net.float()) if keep_weights else None
    results = []
    for i, config in enumerate(configs):
        final, diverged = _final_of(i, finals, trained.alive[i], counts, pruning.get(i, {}))
        results.append(RunResult(
            config=config, status="diverged" if diverged else "done", final=final, history=trained.histories[i],
            seconds=seconds, train_seconds=trained.train_seconds, params=params, q=q, env=env,
            error="loss became NaN/inf; training of this model stopped" if diverged else None,
            state_dict={k: v.detach().cpu() for k, v in singles[i].state_dict().items()} if singles else None,
            spec=singles[i].spec.to_dict() if singles else None))
    return results


def _final_of(i: int, finals: _Finals, alive: bool, counts: dict, pruning: dict) -> tuple[dict, bool]:
    """Model i's final metrics, and whether it diverged: then every measured value is None (a NaN network's argmax
    "accuracy" is meaningless), while the counts from its spec and its pruning record stay."""
    final = {}
    for split, (losses, accs) in finals.splits.items():
        final[f"{split}_loss"], final[f"{split}_acc"] = finite(losses[i]), finite(accs[i])
    final["geometric_complexity"] = finite(finals.complexity[i])
    final["erf50"], final["erf90"] = finals.erf[i]  # effective receptive field, pixels (side of a centred square)
    diverged = not alive or final["train_loss"] is None
    if diverged:
        final = {key: None for key in final}
    final.update(counts)
    final.update(pruning)
    return final, diverged


def evaluation_batch(device: torch.device, batch_size: int, models: int) -> int:
    """Examples per evaluation forward of a pack. Evaluation keeps no graph, so a few training batches' worth fit
    wherever training fits; on a CPU, a forward of about CPU_EVAL_IMAGES model-images in all stays in the caches
    (a 4-block parallel pack of 4 evaluates 2.2x faster at 100 images per model than at 400; one model is as fast
    at 100 as at 400 and 3x slower at 1000: bench/cpu_throughput.py)."""
    size = min(EVAL_BATCH, 4 * batch_size)
    if device.type == "cpu":
        size = min(size, max(1, CPU_EVAL_IMAGES // models))
    return size


def use_channels_last(device: torch.device, spec, precision: str, layout: str = "auto") -> bool:
    """Whether a pack's activations run channels_last: as `layout` says (`depthlab.choices.LAYOUTS`), or by
    default (auto) where measured faster: on CUDA; on the CPU for the branch types that declare it
    (`channels_last_on_cpu`: large depthwise kernels, whose NCHW weight gradient is ~3x slower on one thread and
    10-100x slower with several threads on a busy machine, bench/lk_speed.py), and in bf16, whose CPU kernels are
    blocked for NHWC (bench/cpu_throughput.py). Float32 on the CPU stays NCHW by default, although channels_last
    trains 1.1-1.4x faster at the demo's shapes and 2-3x at the study's (`bench/cpu_throughput.py`): NCHW's
    float32 weights are the same bit for bit on one intra-op thread or two, so a run learns the same alone or
    beside another pack, and recipe 1's float32 training is kept bit for bit. channels_last's weight gradients are
    summed in an order that follows the threads (round-off only). Only activations: weights stay contiguous so
    that the optimizer can view them as (M, -1)."""
    check("layout", layout, LAYOUTS)
    if layout != "auto":
        return layout == "channels_last"
    return device.type == "cuda" or branch_type(spec.branch).channels_last_on_cpu or precision == "bf16"


def layout_key(device: torch.device, spec, precision: str, layout: str) -> dict:
    """What a stored measurement's key (a calibrated pack size, a study's cost) says of `layout`: nothing where
    it computes as the default does, so that keys from before layouts were a choice still match and a layout
    that `auto` would choose anyway shares their measurement; else {"channels_last": bool}."""
    chosen = use_channels_last(device, spec, precision, layout)
    return {} if chosen == use_channels_last(device, spec, precision) else {"channels_last": chosen}


def check_eval_every(eval_every) -> None:
    """Refuse an `eval_every` that is not a positive integer (the sweep runners call it before a store is
    touched)."""
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise SpecError("eval_every", eval_every, "a positive integer (validate every N-th epoch and the last)")


def _float32_parts(device: torch.device, spec, precision: str) -> dict:
    """{"float32_parts": what computes in float32 under bf16 autocast beyond autocast's own list} where there is
    such a part (an lk branch's depthwise convs on a CPU: `LargeKernelBranch.float32_depthwise_on_cpu`)."""
    if precision == "bf16" and device.type == "cpu" and branch_type(spec.branch).float32_depthwise_on_cpu:
        return {"float32_parts": "depthwise convs and their norms"}
    return {}


def _optimizer(configs, net, table) -> PackedOptimizer:
    c0 = configs[0]
    return PackedOptimizer(net, len(configs), kind=c0.optimizer, lr=[c.learning_rate for c in configs],
                           weight_decay=[float(c.weight_decay) for c in configs], momentum=table.sgd_momentum,
                           betas=table.adam_betas, eps=table.adam_eps)


def _batches(configs, dataset, table):
    """The pack's training batches; each config's translation follows the table (`Recipe.translate`)."""
    from depthlab.data import DeviceBatches

    return DeviceBatches(dataset.train_x, dataset.train_y, batch_size=configs[0].batch_size,
                         seeds=[c.seed for c in configs], mean=dataset.mean, std=dataset.std,
                         translate=[table.translate(c) for c in configs], flip=[c.flip for c in configs],
                         drop_last=table.drop_last)


def forward_backward(forward, xb, yb, alive, precision: str, device: torch.device):
    """A training step up to the optimizer: per-model mean losses (M,) and logits; `alive` (M,) loses the models
    whose loss is not finite, and their losses are kept out of the backward pass."""
    models, b = yb.shape
    with precisions.autocast(precision, device):
        out = forward(xb)
    losses = F.cross_entropy(out.float().reshape(models * b, -1), yb.reshape(-1), reduction="none") \
        .view(models, b).mean(1)
    alive &= torch.isfinite(losses)
    # where, not multiply: a diverged model's NaN must not reach the sum (NaN·0 is NaN)
    torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
    return losses, out


def training_throughput(configs: list[RunConfig], dataset, *, device="cpu", precision: str = "fp32",
                        layout: str = "auto", steps: int = 4, warmup: int = 2, interrupt=None) -> float:
    """Model-samples per second of the engine's training step (forward, backward, optimizer) on a pack of
    `configs` (one pack key) from their initial weights, timed over `steps` steps after `warmup` untimed ones
    (allocator, kernel caches). What pack sizes are calibrated by (`depthlab.train.packs`). `interrupt()` is
    called before every step, as in `train_pack`."""
    device = torch.device(device)
    precision = precisions.resolve(precision, device)
    net = pack(_starting_models(configs, dataset, None)).to(device).train()
    net.channels_last = use_channels_last(device, net.spec, precision, layout)
    optimizer, batches = _optimizer(configs, net, recipe.TABLE), _batches(configs, dataset, recipe.TABLE)
    alive = torch.ones(len(configs), dtype=torch.bool, device=device)
    stream = itertools.chain.from_iterable(batches.epoch(epoch) for epoch in itertools.count())
    samples, started = 0, time.perf_counter()
    for step, (xb, yb, _) in enumerate(itertools.islice(stream, warmup + steps)):
        if interrupt is not None:
            interrupt()
        if step == warmup:
            synchronize(device)
            samples, started = 0, time.perf_counter()
        forward_backward(net, xb, yb, alive, precision, device)
        optimizer.step(1.0, active=alive)
        optimizer.zero_grad()
        samples += yb.numel()
    synchronize(device)
    return samples / max(time.perf_counter() - started, 1e-9)


def _prune_data(dataset, models: int, device):
    """SNIP's and GraSP's batch: a few training examples of each class, normalised, one copy per model."""
    from depthlab.data import normalise

    x, y = prune.class_batch(dataset.train_x, dataset.train_y, dataset.num_classes)
    x = normalise(x.to(device), dataset.mean, dataset.std)
    return x.unsqueeze(0).expand(models, *x.shape).contiguous(), y.to(device)


def _masks(configs, net, dataset, device) -> dict:
    c0 = configs[0]
    data = _prune_data(dataset, len(configs), device) if c0.prune in ("snip", "grasp") else None
    return prune.compute_masks(net, c0.prune, c0.density, data=data, seed=c0.seed)


def _mask_record(net, masks) -> dict[int, dict]:
    """Per model: the realised density of each layer and overall, and the weights and FLOPs that remain."""
    sizes, flops_ = prune.layer_sizes(net), prune.layer_flops(net)
    out = {}
    for i, dens in enumerate(prune.layer_densities(net, masks)):
        kept = sum(dens[n] * sizes[n] for n in sizes)
        out[i] = {"layer_density": dens, "realised_density": kept / sum(sizes.values()),
                  "pruned_params": round(kept), "pruned_flops": round(sum(dens[n] * flops_[n] for n in sizes))}
    return out


def _cropped(configs, models, dataset) -> tuple[list, dict]:
    """PreCropping of a run (cropped runs train alone): mask the dense model, read its layer densities off the
    mask, and build the narrower network that realises them, initialised afresh from the seed (its own fan-in)
    or, with crop_init keep, with the dense network's weights of the channels kept."""
    (config,), (dense,) = configs, models
    masks = prune.compute_masks(dense, config.prune, config.density,
                                data=_prune_data(dataset, 1, torch.device("cpu"))
                                if config.prune in ("snip", "grasp") else None, seed=config.seed)
    spec = prune.crop_spec(dense, masks)
    model = build(spec, seed=config.seed)
    if config.crop_init == "keep":  # the dense network's weights of the channels the mask used most
        prune.keep_cropped(dense, masks, model)
    sizes_dense = sum(prune.layer_sizes(dense).values())
    sizes = prune.layer_sizes(model)
    record = {"layer_density": prune.layer_densities(dense, masks)[0], "widths": [spec.width, *spec.block_hidden],
              "realised_density": sum(sizes.values()) / sizes_dense, "pruned_params": sum(sizes.values()),
              "pruned_flops": sum(prune.layer_flops(model).values())}
    return [model], {0: record}


def starting_model(config: RunConfig, dataset):
    """The one-model network `config` starts training from, as `train_pack` builds it: from its seed, and for a
    crop design the narrower network PreCropping makes of it (a mask design keeps its dense shape). `dataset`
    needs the shape fields (in_channels, input_size, num_classes), and the training examples where the crop's
    mask reads them (snip, grasp). What `depthlab.study.cost` measures."""
    models = _starting_models([config], dataset, None)
    return _cropped([config], models, dataset)[0][0] if config.cropped else models[0]


def _starting_models(configs: list[RunConfig], dataset, initial) -> list:
    """Each config's model for `dataset` before training: built from its seed, or the given one (checked to
    fit)."""
    shape = dict(in_channels=dataset.in_channels, input_size=dataset.input_size, num_classes=dataset.num_classes)
    initial = [None] * len(configs) if initial is None else list(initial)
    if len(initial) != len(configs):
        raise ValueError(f"initial: {len(initial)} entries for {len(configs)} configs")
    models = []
    for config, start in zip(configs, initial):
        spec = config.model_spec(**shape)
        if start is None:
            models.append(build(spec, seed=config.seed))
            continue
        if start.models != 1 or not same_shape(start.spec, spec):
            raise ValueError(f"run starting from {config.init_from}: its weights are of another shape "
                             f"({start.spec}) than the run's ({spec})")
        models.append(start)
    return models


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        marker in text for marker in ("out of memory", "can't allocate memory", "cublas_status_alloc_failed"))


def train_pack_splitting(configs: list[RunConfig], dataset, *, on_split=None, on_epoch=None, initial=None,
                         **kwargs) -> list[RunResult]:
    """`train_pack`, halving the pack and retrying when it runs out of memory; a single model that does not fit
    is returned as `failed` with the error. `on_split(sizes)` reports each split; `on_epoch(i, metrics)` keeps
    indexing the configs as given, whichever half trains them."""
    try:
        return train_pack(configs, dataset, on_epoch=on_epoch, initial=initial, **kwargs)
    except Exception as err:  # noqa: BLE001 - only out-of-memory is handled here
        if not is_out_of_memory(err):
            raise
        message = f"out of memory: {err}"
    # Retry outside the except block: the exception's traceback holds the failed pack's frames (its network,
    # optimizer state and activations), which must be freed before the halves are tried.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if len(configs) == 1:
        return [RunResult(config=configs[0], status="failed", final={}, error=message)]
    half = len(configs) // 2
    if on_split is not None:
        on_split((half, len(configs) - half))
    second_on_epoch = None if on_epoch is None else (lambda i, metrics: on_epoch(i + half, metrics))
    first_initial, second_initial = (None, None) if initial is None else (initial[:half], initial[half:])
    return (train_pack_splitting(configs[:half], dataset, on_split=on_split, on_epoch=on_epoch,
                                 initial=first_initial, **kwargs)
            + train_pack_splitting(configs[half:], dataset, on_split=on_split, on_epoch=second_on_epoch,
                                   initial=second_initial, **kwargs))
