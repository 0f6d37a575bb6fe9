"""The recipe: what the engine does to a config, as a version (`RECIPE`) and a table of every constant that decides
what training produces (`TABLE`), in one place as airbench keeps its hyper-parameters.

A run is a config trained by a recipe (see depthlab.records): the run id hashes the config and `RECIPE`, not the
table, so a change to the table is a new recipe only when `RECIPE` is bumped with it.
tests/sweep/test_recipe.py pins a digest of the table per recipe and fails when the table changes and `RECIPE` does
not. Every run records the table it was trained with (its environment's `recipe_table`).

The table holds the constants that change what training produces; the rules that read them (the schedule's shape,
the translation's size) sit beside them as methods. How a run is computed is not in it: precision, layout, pack
size, threads and the evaluation batch (`engine.evaluation_batch`: it moves float32 sums of the evaluation losses
in the 7th digit, as a pack's layout does) are recorded in each run's environment instead (see depthlab.precision).
Constants whose owner sits lower in the pipeline, because other stages must read the same value (the validation
split's seed, the pruning methods' settings that `depthlab prune` shares), stay there; the table refers to them,
so it records and pins them without a second copy.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from depthlab import prune
from depthlab.data import registry
from depthlab.data.datasets import VAL_SEED
from depthlab.records import canonical_json
from depthlab.spec.config import DEFAULT_LR

# The version of the recipe. Bump it with every change that alters what training produces (to the table below or
# to the training code: optimizer, schedule, data order, evaluation, numerics), and add the new table's digest to
# tests/sweep/test_recipe.py. The store then trains the configs again instead of reusing old results, and
# `compare` does not pair runs of different recipes. Changes that only add a field with a default that reproduces
# the old behaviour, or make the engine faster with identical results, keep the recipe.
#   1: the first versioned recipe.
#   2: the final train loss/accuracy over at most `train_eval_examples` training examples (recipe 1: all of them).
RECIPE = 2


@dataclass(frozen=True)
class Recipe:
    """Every constant of the training recipe, with why it has its value."""

    # -- optimizer (depthlab.train.optim) ------------------------------------------------------------------------
    # Adam's moments as Kingma & Ba set them, kept by AdamW (Loshchilov & Hutter) and torch: the study compares
    # wirings, not optimizers, so it trains with the optimizer settings everyone reaches for.
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8        # the same source; far below √v̂ of any weight that moves: it guards the division
    sgd_momentum: float = 0.9     # Nesterov momentum 0.9: the standard for residual CNNs since He et al. (2016)
    # the learning rate of a run that gives none, per optimizer: the spec owns it (`lr: null` means it, and a run's
    # id holds the null), so the table refers to it and pins it like every constant that changes training
    default_lr: tuple[tuple[str, float], ...] = tuple(sorted(DEFAULT_LR.items()))

    # -- learning-rate schedule (lr_factor) -----------------------------------------------------------------------
    # cosine (SGDR without restarts) and linear anneal to this fraction of the run's learning rate at the last
    # step: zero, so every run ends on weights its schedule has settled, whatever its number of epochs
    lr_end: float = 0.0

    # -- data ---------------------------------------------------------------------------------------------------
    translate_small: int = 2      # ±2 px on 28×28: MNIST's digits sit in a centred 20×20 box, so none is cut off
    translate_large: int = 4      # ±4 px: CIFAR's standard pad-4, random-crop augmentation (He et al., 2016)
    small_image: int = 28         # the largest side that takes translate_small (MNIST, Fashion-MNIST; CIFAR is 32)
    # every step a full batch: steps weigh the same under one learning rate, and a pack keeps one batch shape
    # (a compiled pack is not compiled again for a last, smaller batch)
    drop_last: bool = True
    val_seed: int = VAL_SEED      # depthlab.data owns it: every stage that loads a dataset carves the same split

    # -- measurements at the end of a run (depthlab.measure) -----------------------------------------------------
    # final train loss/accuracy on the first ones (recipe 2): as many as a test set of MNIST or CIFAR-10, so the
    # train loss is known as well as the test loss without a pass over 50,000+ examples at the end of every run
    train_eval_examples: int = 10_000
    complexity_examples: int = 128  # geometric complexity: one backward pass per class over each of them
    erf_examples: int = 16          # effective receptive field: the |gradient| of these images, summed; a few
    #                                 suffice (it is a property of the weights) and their graph is kept at once

    # -- pruning at initialisation (depthlab.prune owns them: `depthlab prune` computes the same masks) ---------
    prune_examples_per_class: int = prune.EXAMPLES_PER_CLASS
    synflow_iterations: int = prune.SYNFLOW_ITERATIONS
    grasp_temperature: float = prune.GRASP_TEMPERATURE

    def lr_factor(self, schedule: str, progress: float) -> float:
        """Learning-rate multiplier at `progress` ∈ [0, 1) of training (steps done / all steps)."""
        if schedule == "cosine":
            return self.lr_end + (1 - self.lr_end) * 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "linear":
            return self.lr_end + (1 - self.lr_end) * (1 - progress)
        return 1.0

    def translate(self, config) -> int:
        """The random translation's largest shift (pixels) of run `config`; 0 when it does not translate."""
        side = registry.entry(config.dataset).size
        return self.translate_pixels(side) if "translate" in config.augment else 0

    def translate_pixels(self, side: int) -> int:
        """The random translation's largest shift (pixels, each axis) for images of `side` pixels."""
        return self.translate_small if side <= self.small_image else self.translate_large

    def record(self) -> dict:
        """The table as a run's environment keeps it (JSON types: what the store gives back)."""
        return json.loads(canonical_json(asdict(self)))  # tuples, nested ones too, as the lists JSON gives back

    def digest(self) -> str:
        """sha256 of the table's canonical JSON: what tests/sweep/test_recipe.py pins per recipe."""
        return hashlib.sha256(canonical_json(self.record()).encode()).hexdigest()


TABLE = Recipe()
