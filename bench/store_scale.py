"""How read commands scale with the store's size.

1. `Store.records` (what `results`, `compare`, `summary` and `report` all start with) on a store of `--runs` runs
   in a few sweeps: each run's sweeps listed by one read of the memberships against a subquery per run (what it
   did before), measured in the same run, and the whole read.
2. The read commands themselves (`status`, `results` as CSV and Parquet, `summary`, `compare`, `report`), each a
   `depthlab` process as a user starts it, on stores of `--sizes` done runs (synthetic rows shaped like a paper
   sweep's: a grid of topology x blocks x width x kernel x seed on two datasets, 1% diverged, `--epochs` epochs of
   history, a trained run's environment), built through the store's own API.

    python bench/store_scale.py --runs 10000 --sizes 1000,10000,100000

Prints the seconds of each read and their ratio (before / after), the read's time per 1,000 runs, then the seconds
of each command at each size with its time per 1,000 runs against the smallest store's ("1.00x": linear; below:
a fixed cost, start-up mostly, spread over more runs; above: worse than linear), and the process start-up alone.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# {name: the command's argv before --store}: what each timed command is asked (defaults otherwise)
COMMANDS = {
    "status": ["status"],
    "results-csv": ["results", "--out", "{tmp}/runs.csv"],
    "results-parquet": ["results", "--format", "parquet", "--out", "{tmp}/runs.parquet"],
    "summary": ["summary"],
    "compare": ["compare"],
    "report": ["report", "--out", "{tmp}/report.html"],
}
# The environment a trained run records (depthlab.train.engine), of a realistic size (~1 kB).
ENV = {"channels_last": False, "compile": False, "complexity": True, "data_source": "cache", "depthlab": "0.1.0",
       "device": "cpu (x86_64, 2 cores)", "eval_batch": 128, "git_commit": None, "host": "bench", "pack_size": 8,
       "platform": "Linux-x86_64-with-glibc2.36", "precision": "fp32", "python": "3.11.7", "recipe": 2,
       "recipe_table": {"adam_betas": [0.9, 0.999], "adam_eps": 1e-08, "complexity_examples": 128,
                        "drop_last": True, "erf_examples": 16, "grasp_temperature": 200, "lr_end": 0.0,
                        "prune_examples_per_class": 10, "sgd_momentum": 0.9, "small_image": 28,
                        "synflow_iterations": 100, "train_eval_examples": 10000, "translate_large": 4,
                        "translate_small": 2, "val_seed": 1592590337},
       "threads": 2, "torch": "2.13.0+cpu", "train_eval_examples": 10000, "workers": 1}


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


# What `Store.records` read for each run's sweeps before schema 8's code: a subquery per run (with the index of
# memberships by run, schema 7; without it, quadratic). Now: one read of the memberships (`Store.records`).
PER_RUN = ("SELECT (SELECT json_group_array(sweep) FROM (SELECT sweep FROM sweep_runs s WHERE s.run_id = runs.run_id "
           "ORDER BY s.rowid)) FROM runs{where} ORDER BY rowid")
ONE_READ = "SELECT run_id, sweep FROM sweep_runs{where} ORDER BY rowid"


def timed_memberships(path: Path, sweep: str | None, sql: str) -> float:
    """Seconds to list each run's sweeps (of `sweep`'s runs, or every run's) with `sql`, into Python."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    runs = " WHERE run_id IN (SELECT run_id FROM sweep_runs WHERE sweep = ?)" if sweep else ""
    start = time.perf_counter()
    listed: dict = {}
    for row in con.execute(sql.format(where=runs), [sweep] if sweep else []):
        listed.setdefault(row[0], []).append(row[-1])
    seconds = time.perf_counter() - start
    con.close()
    return seconds


def timed_read(path: Path, sweep: str | None) -> float:
    from depthlab.results.store import Store

    start = time.perf_counter()
    with Store(path, readonly=True) as store:
        store.records(sweep=sweep)
    return time.perf_counter() - start


def membership_reads(runs: int, sweeps: int) -> None:
    """Part 1: each run's sweeps listed by a subquery per run (as `Store.records` did) and by one read of the
    memberships (as it does now), measured in the same run; and `Store.records` itself."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scale.sqlite"
        build(path, runs, sweeps)
        before = {s: timed_memberships(path, s, PER_RUN) for s in (None, "sweep-0")}
        after = {s: timed_memberships(path, s, ONE_READ) for s in (None, "sweep-0")}
        whole = {s: timed_read(path, s) for s in (None, "sweep-0")}
    print(f"store of {runs:,} runs in {sweeps} sweeps (+ one holding all)")
    for s in (None, "sweep-0"):
        what = "every run" if s is None else f"one sweep ({runs // sweeps:,} runs)"
        print(f"records of {what}: their sweeps in {before[s]:.3f} s by a subquery per run, {after[s]:.3f} s by one "
              f"read: {before[s] / after[s]:.1f}x; the whole read {whole[s]:.3f} s "
              f"({whole[s] / runs * 1000:.3f} s per 1,000 runs)")


# -- part 2: the commands --------------------------------------------------------------------------------------


def grid(runs: int) -> list[dict]:
    """`runs` configs of a paper-like grid, seeds outermost so that every seed completes its pairs; each a whole
    run config (every field), as a sweep stores it."""
    from depthlab.spec.config import RunConfig

    shapes = [RunConfig(dataset=d, topology=t, blocks=b, width=w, kernel=k, epochs=10).to_dict()
              for d in ("mnist", "cifar10") for b in (2, 4, 8, 16) for w in (8, 16, 32, 64) for k in (3, 5)
              for t in ("sequential", "parallel")]
    return [{**shapes[i % len(shapes)], "seed": i // len(shapes)} for i in range(runs)]


def _metrics(config: dict, rng: random.Random) -> tuple[dict, int, float]:
    """Final metrics, parameters and Q of a synthetic run: loss falls with width, a little noise per seed."""
    params = config["width"] ** 2 * config["blocks"] * config["kernel"] ** 2 + 10 * config["width"]
    examples = 50_000 if config["dataset"] == "cifar10" else 60_000
    base = 1.2 / math.log2(config["width"]) + (0.02 if config["topology"] == "parallel" else 0.0)
    loss = lambda: max(0.01, base + rng.gauss(0, 0.05))
    final = {"train_loss": loss() * 0.8, "val_loss": loss(), "test_loss": loss(), "erf50": rng.randint(3, 30)}
    final.update(train_acc=1 - final["train_loss"] / 3, val_acc=1 - final["val_loss"] / 3,
                 test_acc=1 - final["test_loss"] / 3)
    return final, params, examples * 10 / params


def _history(final: dict, epochs: int) -> list[dict]:
    return [{"epoch": e + 1, "seconds": 1.0 + e, "train_seconds": 0.9 + e,
             **{m: final[m] * (1 + (epochs - e - 1) / epochs) for m in ("train_loss", "val_loss")},
             **{m: final[m] * (e + 1) / epochs for m in ("train_acc", "val_acc")}} for e in range(epochs)]


def build_sweep(path: Path, runs: int, epochs: int, *, chunk: int = 5_000) -> None:
    """A store of `runs` finished runs of one sweep through the store's API (added, claimed and finished as a
    runner does, a chunk at a time); 1 in 100 diverged."""
    from depthlab.results.store import Store

    rng = random.Random(0)
    owner = "bench:1:x"
    with Store(path) as store:
        configs = grid(runs)
        for start in range(0, runs, chunk):
            part = configs[start:start + chunk]
            ids = store.claim(store.add_runs(part, sweep="scale", recipe=2), owner)
            for i, (rid, config) in enumerate(zip(ids, part), start):
                final, params, q = _metrics(config, rng)
                diverged = rng.random() < 0.01
                store.finish(rid, owner, status="diverged" if diverged else "done",
                             final={} if diverged else final, history=_history(final, epochs),
                             params=params, q=q, seconds=30.0, train_seconds=25.0,
                             env={**ENV, "pack": f"{i // 8:06d}"}, error="loss is nan" if diverged else None)
        store.checkpoint()


def timed_command(argv: list[str]) -> float:
    """Seconds of one `depthlab` process, as a user starts it (start-up and imports included)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "depthlab.cli.main", *argv], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"depthlab {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds


def command_times(sizes: list[int], epochs: int, commands: list[str]) -> None:
    """Part 2: each of `commands` on a store of each size."""
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        startup = min(timed_command(["--version"]) for _ in range(2))
        for n in sizes:
            path = Path(tmp) / f"s{n}.sqlite"
            start = time.perf_counter()
            build_sweep(path, n, epochs)
            print(f"built a store of {n:,} runs ({epochs} epochs each) in {time.perf_counter() - start:.1f} s: "
                  f"{os.path.getsize(path) / 2 ** 20:.1f} MiB")
            for name in commands:
                argv = [a.format(tmp=tmp) for a in COMMANDS[name]]
                seconds[name].append(timed_command([*argv, "--store", str(path)]))
    base = sizes[0]
    print(f"\ncommand seconds (a depthlab process each; start-up alone {startup:.2f} s); "
          f"in brackets the time per 1,000 runs against the {base:,}-run store's")
    print(f"{'command':<16}" + "".join(f"{f'{n:,} runs':>22}" for n in sizes))
    for name, times in seconds.items():
        cells = [f"{t:.2f} s ({t / n / (times[0] / base):.2f}x)" for t, n in zip(times, sizes)]
        print(f"{name:<16}" + "".join(f"{c:>22}" for c in cells))


def commands_arg(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in COMMANDS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"--commands {text!r}: comma-separated names among {', '.join(COMMANDS)}")
    return names


def sizes_arg(text: str) -> list[int]:
    sizes = [int(s) for s in text.split(",") if s.strip()]
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"--sizes {text!r}: comma-separated run counts, each at least 1")
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs of the memberships comparison (part 1)")
    parser.add_argument("--sweeps", type=int, default=4)
    parser.add_argument("--sizes", type=sizes_arg, default=[1_000, 10_000, 100_000],
                        help="store sizes the commands are timed on, smallest first (default: 1000,10000,100000)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of history per synthetic run")
    parser.add_argument("--commands", type=commands_arg, default=list(COMMANDS),
                        help=f"the commands timed (default: all of {','.join(COMMANDS)})")
    args = parser.parse_args(argv)
    membership_reads(args.runs, args.sweeps)
    print()
    command_times(sorted(args.sizes), args.epochs, args.commands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
