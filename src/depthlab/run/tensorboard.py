"""TensorBoard logs of a sweep: each trained run's per-epoch metrics as scalars, written as its epochs end.

`depthlab run --tensorboard DIR` (or `run_sweep(..., tensorboard=DIR)`) gives every run this process trains a
log directory of its own, DIR/RUN_ID, a pack's models included: each is its own run. The driver hands each epoch
of a run it holds to `Board.epoch` in the process that drives the sweep (depthlab.run.driver), so the curves grow
while the sweep trains and `tensorboard --logdir DIR` shows them beside it. Each run's directory holds:

- one scalar per number of the epoch's history entry (train_loss, train_acc, val_loss, val_acc, seconds,
  train_seconds, ...: what the store's history holds), tag = its key, step = the epoch (1, 2, ...); a metric
  that is not finite is stored as null in the history and left out here;
- at step 0, a text summary `run` (the run id, the sweep, the config as JSON) and the config with the sweep as
  hparams, so that TensorBoard's HParams tab tables the runs against their last metrics.

A run is written only while it trains: finished runs that a resumed sweep skips keep their logs untouched. A run
that trains again from scratch (interrupted by a stop or a crash, or restarted by a pack split after running
out of memory) first removes the event files its earlier attempt left, and starts its file with a restart at
step 0, so that a TensorBoard that had read them drops them too (the `purge_step` of SummaryWriter).
A directory that cannot be written stops the logging with one message, never the sweep: the store is the record.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from depthlab.errors import DepthlabError

EXTRA_HINT = "pip install 'depthlab[tensorboard]'"
EVENT_FILES = "events.out.tfevents.*"  # how TensorBoard's SummaryWriter names its files


def open_board(directory, sweep: str, log):
    """The Board writing into `directory` for sweep `sweep`, or None without a directory. Refused before
    anything trains when the tensorboard package is missing or the directory cannot be made."""
    if directory is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DepthlabError(f"--tensorboard needs the tensorboard package: {EXTRA_HINT}") from None
    root = Path(directory)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DepthlabError(f"--tensorboard {directory}: cannot make this directory ({err.strerror}); give a "
                            "directory path that can be created") from None
    return Board(root, sweep, SummaryWriter, log)


class Board:
    """The TensorBoard writers of the runs that train now, one per run; shared by the driver's worker threads."""

    def __init__(self, root: Path, sweep: str, writer_class, log):
        self.root, self.sweep, self.writer_class, self.log = root, sweep, writer_class, log
        self._writers: dict = {}  # run id -> its open SummaryWriter
        self._lock = threading.Lock()
        self._broken = False  # a write failed: said once, then nothing more is written

    def epoch(self, run: str, config, metrics: dict) -> None:
        """Write one epoch of run `run` (a held run of `config`) and flush it, so that TensorBoard sees it now."""
        with self._lock:
            if self._broken:
                return
            try:
                writer = self._writers[run] if run in self._writers else self._open(run, config, metrics)
                for tag, value in scalars(metrics).items():
                    writer.add_scalar(tag, value, metrics["epoch"])
                writer.flush()
            except OSError as err:
                self._broken = True
                self.log(f"TensorBoard: cannot write {self.root / run} ({err}); the sweep goes on without "
                         "TensorBoard logs (every result is in the store)")

    def end(self, run: str) -> None:
        """Run `run` finished, failed or starts over: its writer is closed (a new attempt opens a new one)."""
        with self._lock:
            writer = self._writers.pop(run, None)
            if writer is not None:
                self._close(writer)

    def close(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                self._close(writer)
            self._writers.clear()

    def _open(self, run: str, config, metrics: dict):
        """A new writer for `run`, its earlier attempt's files removed, and the run's description at step 0."""
        path = self.root / run
        for stale in path.glob(EVENT_FILES):
            stale.unlink(missing_ok=True)
        writer = self.writer_class(log_dir=str(path), purge_step=0)
        self._writers[run] = writer
        fields = config.to_dict()
        writer.add_text("run", f"run `{run}` of sweep `{self.sweep}`\n\n```json\n"
                        f"{json.dumps(fields, indent=1)}\n```", 0)
        from torch.utils.tensorboard.summary import hparams

        experiment, start, _ = hparams({"sweep": self.sweep, **hparam_values(fields)},
                                       dict.fromkeys(scalars(metrics)))
        writer.file_writer.add_summary(experiment, 0)
        writer.file_writer.add_summary(start, 0)
        return writer

    def _close(self, writer) -> None:
        try:
            writer.close()
        except OSError:
            pass  # what could not be written was said in `epoch`


def scalars(metrics: dict) -> dict:
    """The numbers of an epoch's history entry, by key (not the epoch itself, which is the step; not flags such as
    `diverged`; not a metric stored as null because it was not finite)."""
    return {k: v for k, v in metrics.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def hparam_values(fields: dict) -> dict:
    """A config's fields as TensorBoard takes hparams: numbers, strings and booleans as they are, lists as their
    JSON text; None (a field left to its default) is left out."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
            for k, v in fields.items() if v is not None}
