"""The sweep's progress bar: runs done / total, runs/s, and an ETA that weighs every run by its cost.

A sweep over depth mixes runs whose costs differ a hundredfold (256 blocks against 2), so an ETA from runs/s
alone is wrong by that much whenever the cheap runs come first. Here the bar fills by estimated training FLOPs
(forward FLOPs × 3 × examples × epochs), credited epoch by epoch where the backend reports epochs, and the ETA is
the elapsed time scaled by the work still to do.

On a terminal the bar keeps the percentage and the ETA first, after the sweep's name cut to what the width leaves
(tqdm trims the less important counts at the end of the line instead). Elsewhere (a pipe, a log file, a notebook
cell's captured stderr) a bar redrawn with carriage returns would repeat its line hundreds of times, so plain lines
are written instead: one at the start, one per `PLAIN_STEP` of the work or per finished pack (runs that finish
within `PLAIN_QUIET` seconds of the last line share it), and one at the end.
"""

from __future__ import annotations

import shutil
import sys
import time

from tqdm import tqdm

from depthlab.data import registry
from depthlab.data.datasets import validation_count
from depthlab.models import flops
from depthlab.spec.config import RunConfig
from depthlab.records import config_id

BAR = "{desc}: {percentage:3.0f}% "  # the ETA, the bar and the run counts follow (see SweepProgress._refresh)
PLAIN_STEP = 0.05   # a plain line per 5% of the work ...
PLAIN_QUIET = 1.0   # ... or per finished pack: runs finishing within a second of the last line share it
NAME_MIN = 12       # the shortest a cut name gets: enough to tell sweeps apart


def progress_bar(iterable=None, *, total=None, desc="", enabled=None):
    """A plain tqdm bar on stderr for analysis loops, shown by default only when stderr is a terminal (tests and
    pipes stay quiet)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False)


def training_examples(config: RunConfig) -> int:
    """How many examples a run trains on, from its config alone (no dataset is loaded)."""
    total = registry.entry(config.dataset).sizes[0]  # the standard train count, before a validation split
    left = max(1, total - validation_count(total, config.val_split))
    return min(left, config.train_subset) if config.train_subset is not None else left


def run_cost(config: RunConfig) -> float:
    """Estimated training FLOPs of a run (forward and backward: 3 × forward, per example per epoch)."""
    return 3.0 * flops(config.model_spec()) * training_examples(config) * config.epochs


class SweepProgress:
    """tqdm over a sweep's runs, filled by cost. `epoch(config)` credits one epoch of a run, `finished(config)`
    the rest of it (and counts the run), `restart(configs)` takes back what runs that start over had earned (a
    pack split after running out of memory), and `elsewhere(config)` drops a run that another runner holds."""

    def __init__(self, configs: list[RunConfig], desc: str, *, enabled: bool = True, file=None):
        self.cost = {config_id(c.to_dict()): run_cost(c) for c in configs}
        self.credited = dict.fromkeys(self.cost, 0.0)
        self.work_total, self.work_done = sum(self.cost.values()), 0.0  # the sums of cost and credited
        self.runs, self.done, self.diverged, self.taken = len(configs), 0, 0, 0
        self.started = time.perf_counter()
        self.file, self.desc, self.enabled = file or sys.stderr, desc, enabled
        self.interactive = enabled and _is_terminal(self.file)
        self.printed = None  # (work fraction, runs done, time) of the last plain line
        self.bar = tqdm(total=self.work_total or 1.0, desc=desc, disable=not self.interactive,
                        file=self.file, dynamic_ncols=True, bar_format=BAR)
        self._refresh()

    def _credit(self, key: str, amount: float) -> None:
        """Credit `amount` more of run `key` (a negative amount takes credit back), within [0, its cost]."""
        amount = max(-self.credited[key], min(amount, self.cost[key] - self.credited[key]))
        self.credited[key] += amount
        self.work_done += amount

    def epoch(self, config: RunConfig) -> None:
        key = config_id(config.to_dict())
        self._credit(key, self.cost[key] / config.epochs)
        self._refresh()

    def finished(self, config: RunConfig, status: str = "done") -> None:
        key = config_id(config.to_dict())
        self._credit(key, self.cost[key])
        self.done += 1
        self.diverged += status == "diverged"
        self._refresh()

    def restart(self, configs: list[RunConfig]) -> None:
        for config in configs:
            key = config_id(config.to_dict())
            self._credit(key, -self.credited[key])
        self._refresh()

    def elsewhere(self, config: RunConfig) -> None:
        """Another runner trains this run: neither its count nor its cost is this runner's."""
        key = config_id(config.to_dict())
        self._credit(key, -self.credited[key])
        self.work_total -= self.cost[key]
        self.cost[key] = 0.0
        self.runs -= 1
        self.taken += 1
        self._refresh()

    def eta(self) -> float | None:
        """Seconds left at the rate so far, or None before any work is credited."""
        if self.work_done <= 0:
            return None
        return (time.perf_counter() - self.started) * (self.work_total - self.work_done) / self.work_done

    def fraction(self) -> float:
        return min(1.0, self.work_done / self.work_total) if self.work_total > 0 else 1.0

    def _counts(self, elapsed: float) -> str:
        return (f"{self.done}/{self.runs} runs, {tqdm.format_interval(elapsed)} elapsed, "
                f"{self.done / max(elapsed, 1e-9):.2f} runs/s, {self.diverged} diverged"
                + (f", {self.taken} taken by other runners" if self.taken else ""))

    def _refresh(self, final: bool = False) -> None:
        elapsed, eta = time.perf_counter() - self.started, self.eta()
        eta_text = f"ETA {'?' if eta is None else tqdm.format_interval(eta)}"
        self.bar.total = max(self.work_total, 1e-9)  # tqdm divides by it
        self.bar.n = self.work_done
        if not self.interactive:
            if self.enabled and (final or self._plain_due()):
                print(f"{self.desc}: {100 * self.fraction():3.0f}% {eta_text}, {self._counts(elapsed)}",
                      file=self.file, flush=True)
                self.printed = (self.fraction(), self.done, time.perf_counter())
            return
        # the status goes into the format itself (tqdm's own postfix would follow a stray ", "), escaped for it
        tail = f"{eta_text} |{{bar}}| " + self._counts(elapsed).replace("{", "{{").replace("}", "}}")
        self.bar.desc = fit_name(self.desc, shutil.get_terminal_size().columns)
        self.bar.bar_format = BAR + tail
        self.bar.refresh()

    def _plain_due(self) -> bool:
        """Whether a plain line is due: the first, the next PLAIN_STEP of the work, or a run finished since the
        last line and no other line for PLAIN_QUIET seconds (the rest of its pack finishes in that time)."""
        if self.printed is None:
            return True
        fraction, done, at = self.printed
        return (self.fraction() >= fraction + PLAIN_STEP
                or (self.done > done and time.perf_counter() - at >= PLAIN_QUIET))

    def close(self) -> None:
        if not self.interactive and self.printed is not None and self.printed[1:2] != (self.done,):
            self._refresh(final=True)  # the last runs' line, unless it was printed already
        self.bar.close()


def fit_name(name: str, columns: int) -> str:
    """`name` cut (with an ellipsis) so that its percentage, ETA and a short bar fit in `columns`: about 40
    characters follow it ('100% ETA 01:02:03 |' and ten of bar)."""
    room = max(NAME_MIN, columns - 40)
    return name if len(name) <= room else name[:room - 1] + "…"


def _is_terminal(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # a closed or a file-like object without a terminal behind it
        return False
