"""How read commands scale with the store's size: `Store.records` (what `results`, `compare`, `summary` and
`report` all start with) on a store of N runs in a few sweeps, with the index of sweep memberships by run (schema
7) against the same store without it, measured in the same run.

    python bench/store_scale.py --runs 10000

Prints the seconds of each and their ratio (before / after), and the read's time per 1,000 runs.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path


def build(path: Path, runs: int, sweeps: int) -> None:
    """A store of `runs` done runs, each in one of `sweeps` sweeps, plus one sweep holding them all."""
    from depthlab.results.store import Store

    with Store(path) as store:
        configs = [dict(dataset="mnist", width=8, blocks=2, seed=i) for i in range(runs)]
        for k in range(sweeps):
            store.add_runs(configs[k::sweeps], sweep=f"sweep-{k}", recipe=2)
        ids = store.add_runs(configs, sweep="all", recipe=2)
        store.claim(ids, "bench:1:x")
        for rid in ids:
            store.finish(rid, "bench:1:x", status="done", final={"val_loss": 0.3, "val_acc": 0.9}, history=[{}],
                         params=1000, q=1.0, seconds=1.0, train_seconds=0.8, env={"pack_size": 1})


def timed_read(path: Path, sweep: str | None) -> float:
    from depthlab.results.store import Store

    start = time.perf_counter()
    with Store(path, readonly=True) as store:
        store.records(sweep=sweep)
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--sweeps", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.sqlite"
        build(path, args.runs, args.sweeps)
        after = {s: timed_read(path, s) for s in (None, "sweep-0")}
        con = sqlite3.connect(path)
        con.execute("DROP INDEX sweep_runs_by_run")  # the store as schema 6 kept it
        con.commit()
        con.close()
        before = {s: timed_read(path, s) for s in (None, "sweep-0")}
    print(f"store of {args.runs:,} runs in {args.sweeps} sweeps (+ one holding all)")
    for s in (None, "sweep-0"):
        what = "every run" if s is None else f"one sweep ({args.runs // args.sweeps:,} runs)"
        print(f"records of {what}: {before[s]:.3f} s without the index, {after[s]:.3f} s with it: "
              f"{before[s] / after[s]:.1f}x ({after[s] / args.runs * 1000:.3f} s per 1,000 runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
