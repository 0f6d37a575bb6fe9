"""The study's levels and its shared run settings: one table each, with the reason beside every value.

A level decides how much evidence the study buys: the seeds of its first round and the cap that undecided
contrasts may grow to, how long each network trains, on how much data, which depths the frontier spans, and how
much of the corruption suite the robustness lever measures. Everything else a run needs is a study setting
(`SETTINGS`), the same at every level, so that a quick study's designs are the standard study's designs trained
for less long (a run trained by both is one run in the store).

Training lengths were chosen where the designs learn: on MNIST the quick level's runs reach 95–99% validation
accuracy, within a point or two of what the same networks reach trained twice as long (README, "depthlab study",
gives the measurement). A level that left its networks far from trained would compare nothing.
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
    budgets: tuple[int, ...]  # the parameter budgets studied when none is given
    shift_examples: int     # test examples per corruption in the robustness lever
    shift_corruptions: int | None  # the first N corruptions of the dataset's suite; None: all of them

    @property
    def looks(self) -> int:
        """Rounds a contrast can be tested in: the first, then one per seed step up to the cap."""
        return 1 + -(-(self.max_seeds - self.seeds) // self.seed_step) if self.max_seeds > self.seeds else 1


LEVELS: dict[str, Level] = {
    # minutes on two CPU cores: MNIST at 20k parameters, a fifth of the training set, four epochs
    "quick": Level(seeds=3, max_seeds=5, seed_step=2, epochs=4, train_subset=10_000, depths=(1, 2, 4, 8),
                   budgets=(20_000,), shift_examples=256, shift_corruptions=5),
    # an hour or so on a CPU: half the data, more epochs, the 16-block frontier and two budgets
    "standard": Level(seeds=3, max_seeds=8, seed_step=2, epochs=10, train_subset=30_000, depths=(1, 2, 4, 8, 16),
                      budgets=(20_000, 80_000), shift_examples=1000, shift_corruptions=None),
    # a GPU or a night: all the data, twice the epochs, up to 12 seeds where a contrast stays close
    "thorough": Level(seeds=5, max_seeds=12, seed_step=3, epochs=20, train_subset=None, depths=(1, 2, 4, 8, 16),
                      budgets=(20_000, 80_000), shift_examples=2000, shift_corruptions=None),
}
DEFAULT_LEVEL = "quick"

# Run fields every design of a study shares (a study spec may change any of them). Why each:
SETTINGS: dict = {
    "head": "gap",          # the classifier sees the pooled stream: the budget is spent in the blocks, where depth
                            # and width trade, not in a flatten head that would hold most of the parameters
    "stem_stride": 2,       # 14x14 feature maps on MNIST: 4x cheaper than 28x28, the same ranking in our sweeps
    "norm": "batch",        # the paper's block; the scaling lever contrasts norm-free designs with it
    "optimizer": "adam",
    "lr": 0.003,            # Adam at batch 128 learns these small networks in a few epochs (the demo's rate)
    "batch_size": 128,
    "schedule": "cosine",
    "val_split": 2000,      # the study's metric is measured on these held-out training examples
    "test_subset": 2000,    # the corruption suite's streams are made from these test examples
}

# The study's metric and its margin: validation accuracy, one percentage point (compare's accuracy default).
METRIC = "val_acc"
MARGIN = 0.01
ALPHA = 0.05
