"""The study's levels and its shared run settings: one table each, with the reason beside every value.

A level decides how much evidence the study buys: the seeds of its first round and the cap that undecided
contrasts may grow to, how long each network trains, on how much data, which depths the frontier spans, and how
much of the corruption suite the robustness lever measures. Everything else a run needs is a study setting
(`SETTINGS`), the same at every level, so that the levels study the same networks and differ only in how much
evidence they buy.

Training lengths were chosen where the designs learn. On MNIST at 20k parameters the slowest learners are the
shallow-and-wide designs (one block; four blocks in parallel): trained on 5,000 examples at Adam's lr 0.01 they reach
95.9% and 95.4% validation accuracy in 16 epochs, against 96.6% and 96.3% in 32 (at lr 0.003 they reach only 93.4%
and 94.2% in 16, and 10,000 examples for 4 epochs left them at 88% and 85%: that compared how fast designs learn,
not what they learn). A level that left its networks far from trained would compare nothing. On Fashion-MNIST the
same quick lengths leave the one-block design 2.4 points short of 32 epochs (80.6% against 83.0%), four blocks in
parallel 1.4 and eight in sequence 1.2: there the quick level partly compares how fast designs learn (README).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Level:
    seeds: int              # seeds of every design in the first round (3: the fewest pairs a verdict is given on)
    max_seeds: int          # the cap an undecided contrast's designs may grow to
    seed_step: int          # seeds added to an undecided contrast per round
    epochs: int             # passes over the training subset
    train_subset: int | None  # training examples (the first K of the dataset's fixed order); None: all
    depths: tuple[int, ...]   # blocks of the frontier's designs, shallow-and-wide to deep-and-narrow
    kernels: tuple[int, ...]  # the kernel lever's lk sizes (dilated re-parameterisation)
    budgets: tuple[int, ...]  # the parameter budgets studied when none is given
    shift_examples: int     # test examples per corruption in the robustness lever
    shift_corruptions: int | None  # the first N corruptions of the dataset's suite; None: all of them
    eval_every: int         # validate every N-th epoch and the last (the study reads each run's last validation)


LEVELS: dict[str, Level] = {
    # MNIST at 20k parameters: 5,000 examples for 16 epochs, within a point of twice as long (the docstring)
    # lk 7 only: a depthwise kernel trains 5-10x slower per FLOP than a dense 3x3 one on a CPU, and lk 13's dilated
    # form trains five of them (433 samples/s in bf16 against 4,943 for the 3x3 design at 20k parameters)
    "quick": Level(seeds=3, max_seeds=5, seed_step=2, epochs=16, train_subset=5_000, depths=(1, 2, 4, 8),
                   kernels=(7,), budgets=(20_000,), shift_examples=256, shift_corruptions=5,
                   # a pass over the validation split every epoch was 8% of a pack's time at quick's sizes; the
                   # study reads the last one, and four points show a curve's shape
                   eval_every=4),
    # hours on a CPU: half the data, the 16-block frontier and two budgets
    "standard": Level(seeds=3, max_seeds=8, seed_step=2, epochs=10, train_subset=30_000, depths=(1, 2, 4, 8, 16),
                      kernels=(7, 13), budgets=(20_000, 80_000), shift_examples=1000, shift_corruptions=None,
                      eval_every=2),
    # a GPU or a night: all the data, twice the epochs, up to 12 seeds where a contrast stays close
    "thorough": Level(seeds=5, max_seeds=12, seed_step=3, epochs=20, train_subset=None, depths=(1, 2, 4, 8, 16),
                      kernels=(7, 13), budgets=(20_000, 80_000), shift_examples=2000, shift_corruptions=None,
                      eval_every=4),
}
DEFAULT_LEVEL = "quick"

# Run fields every design of a study shares (a study spec may change any of them). Why each:
SETTINGS: dict = {
    "head": "gap",          # the classifier sees the pooled stream: the budget is spent in the blocks, where depth
                            # and width trade, not in a flatten head that would hold most of the parameters
    "stem_stride": 2,       # 14x14 feature maps on MNIST: 4x cheaper than 28x28, the same ranking in our sweeps
    "norm": "batch",        # the paper's block; the scaling lever contrasts norm-free designs with it
    "optimizer": "adam",
    "lr": 0.01,             # Adam at batch 128 with a cosine decay: 0.003 left the shallow designs 2-3 points short
                            # of their plateau in 16 epochs of 5,000 MNIST examples, 0.01 within one (docstring)
    "batch_size": 128,
    "schedule": "cosine",
    "val_split": 2000,      # the study's metric is measured on these held-out training examples
    "test_subset": 2000,    # the corruption suite's streams are made from these test examples
}

# How the study's runs are computed (not what they are: no run field, so a run another sweep trained is not trained
# again): channels_last activations, where `depthlab run` keeps float32 on a CPU in NCHW. The study asks for speed,
# as it does in bf16 (channels_last already): at its sizes channels_last trains float32 several times faster on a
# CPU, for weights that differ by round-off with the intra-op thread count (engine.use_channels_last measured it).
LAYOUT = "channels_last"

# The study's metric and its margin: validation accuracy, one percentage point (compare's accuracy default).
METRIC = "val_acc"
MARGIN = 0.01
ALPHA = 0.05
