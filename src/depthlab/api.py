"""depthlab from Python: a store as pandas DataFrames, and sweeps and studies run from a notebook.

    import depthlab
    depthlab.run_sweep("demo", store="demo.sqlite")    # train (resumable), returns the sweep's runs
    runs = depthlab.runs("demo.sqlite")                 # one row per run: every field, metric and measurement
    curves = depthlab.history("demo.sqlite")            # one row per run and epoch
    verdicts = depthlab.compare("demo.sqlite")          # one row per contrast, value pair, band and metric
    answer = depthlab.run_study(dataset="mnist", budgets=[20_000], store="study.sqlite")

Each function is what a command does (`run`, `results`, `results --history`, `compare --json`, `study --json`),
with the same validation and messages; `import depthlab` stays light (torch and pandas load on first use).
"""

from __future__ import annotations

from depthlab.errors import DepthlabError

def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise DepthlabError("depthlab's DataFrames need pandas: pip install pandas") from None
    return pd


def _records(store, sweep=None, status=None) -> list:
    from depthlab.results.store import Store

    with Store.existing(store, readonly=True) as s:
        return s.records(sweep=sweep, status=status)


def runs(store="depthlab.sqlite", *, sweep: str | None = None, status: str | None = None):
    """One row per run of the store (of `sweep`, with `status` when given), the columns of `depthlab results`:
    its id, sweeps, status and final metrics, its pack (`pack` id, `pack_size`, and this run's share of the pack's
    time: add `pack_seconds` up, not `seconds`, which its pack-mates share), every config field (constant ones
    included), every extra measurement (erf, densities, ...), and the environment as `env.<key>`."""
    from depthlab.results.export import flat_table

    return _pandas().DataFrame(flat_table(_records(store, sweep, status)))


def history(store="depthlab.sqlite", *, sweep: str | None = None):
    """The per-epoch metrics in long form: one row per run and epoch (run_id, epoch, then what the epoch
    recorded: training loss and accuracy, validation loss and accuracy, seconds, ...)."""
    from depthlab.results.export import history_table

    columns, rows = history_table(_records(store, sweep))
    return _pandas().DataFrame(rows, columns=columns)


def compare(store="depthlab.sqlite", *, sweep: str | None = None, contrast: str = "topology",
            metrics=("val_loss", "train_loss", "val_acc"), by: str | None = None, margin: float | None = None,
            alpha: float = 0.05):
    """The paired comparison as a DataFrame: one row per metric, pair of contrast values (a, b; d = b - a),
    dataset, Q band (and `by` value), with the pairs used, mean d, its CI, wins, TOST p and the verdict; what
    `depthlab compare --json` gives, flattened."""
    pd = _pandas()
    from depthlab.analysis.compare import compare_report

    report = compare_report(_records(store, sweep), margin=margin, by=by, metrics=metrics, alpha=alpha,
                            contrast=contrast)
    rows = []
    for metric, comparisons in report["paired"].items():
        for res in comparisons:
            for group in res["groups"]:
                rows.append({"metric": metric, "contrast": contrast, "a": res["a_label"], "b": res["b_label"],
                             **{k: v for k, v in group.items() if not isinstance(v, dict)}})
    return pd.DataFrame(rows)


def run_sweep(spec="demo", store="depthlab.sqlite", *, overrides: dict | None = None, name: str | None = None,
        progress: bool = True, **options):
    """Train the sweep `spec` (a preset name, a YAML path, or a dict as a spec file holds) into `store`, as
    `depthlab run` does (resumable; `options`: run_sweep's, e.g. device, precision, save_weights, workers, and
    tensorboard=DIR to write each trained run's epochs as TensorBoard scalars under DIR/RUN_ID), and return its
    runs (`runs(store, sweep=...)`). Progress goes to stderr, which a notebook shows."""
    import dataclasses

    from depthlab.results.store import check_store_path
    from depthlab.run import runner
    from depthlab.spec.grid import SweepSpec, load_spec

    check_store_path(store)
    sweep = SweepSpec.from_dict(spec) if isinstance(spec, dict) else load_spec(spec)
    sweep = sweep.with_overrides(overrides or {})
    if name is not None:
        sweep = dataclasses.replace(sweep, name=name)
    runner.run_sweep(sweep, store, progress=progress, **options)
    return runs(store, sweep=sweep.name)


RUN_OPTIONS = ("device", "backend", "ray_address", "precision", "layout", "data_root", "train", "log")


def run_study(spec=None, store="depthlab.sqlite", *, progress: bool = True, **fields) -> dict:
    """Run (or resume) a study, as `depthlab study` does, and return its result (the dict `--json` prints).
    `spec`: a StudySpec, a dict of study fields or a YAML path (as `--write-spec` writes); keywords: study fields
    on top of it (dataset, budgets, level, levers, ...; the name defaults as on the command line) and the run
    options of `run_study` (device, backend, precision, layout, data_root, train)."""
    from depthlab.study import runner
    from depthlab.study.design import StudySpec, default_name, read_spec_file

    options = {k: fields.pop(k) for k in RUN_OPTIONS if k in fields}
    if isinstance(spec, StudySpec):
        the_spec = spec.replace(**fields) if fields else spec
    else:
        values = {**(dict(spec) if isinstance(spec, dict) else read_spec_file(spec) if spec is not None else {}), **fields}
        values.setdefault("name", default_name(values))
        the_spec = StudySpec.from_dict(values)
    return runner.run_study(the_spec, store, progress=progress, **options)
