"""Every branch type and pruning structure saves weights that every command reading a trained run loads (#23).

One run per (branch type and re-param, pruning, wiring), read from the registries and trained once for the module
with its weights kept. Every command that reads a run's weights then either analyses each run (exit 0) or refuses
it on purpose: exit 2 and one line saying why, as the command declares. Never a traceback, never a size mismatch,
never a request to train the run again.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from depthlab import choices
from depthlab.analysis.convert import unconvertible
from depthlab.cli.main import main
from depthlab.models import param_count
from depthlab.models.branches import BRANCHES, DILATED_BRANCHES
from depthlab.prune import STRUCTURES
from depthlab.results.store import Store
from depthlab.results.weights import load_trained
from depthlab.run.runner import run_sweep
from depthlab.spec.config import RunConfig
from depthlab.spec.grid import SweepSpec

# each branch type, plain and with its first re-param where it has any (the others build the same modules with
# other kernels); the kernel of a re-param: the smallest it takes
BRANCHINGS = [(branch, reparam) for branch in choices.BRANCH_TYPES for reparam in BRANCHES[branch].reparams[:2]]
PRUNINGS = ("dense", *STRUCTURES)  # unpruned, then every structure that prune_structure allows
TOPOLOGIES = ("sequential", "parallel")  # a crop's widths and a parallel layer's widths constrain each other
RUNS = list(itertools.product(BRANCHINGS, PRUNINGS, TOPOLOGIES))
PRUNE = "random"  # at width 4 it crops lk's sequential blocks to unequal widths, which the parallel wiring refuses
DEFAULTS = dict(dataset="synthetic", val_split=8, train_subset=16, test_subset=8, width=4, blocks=2, stem_stride=2,
                batch_size=16, epochs=1)

# Each command that loads a run's weights, and the arguments that keep it small. convert fine-tunes too: the
# engine then loads the run's weights as the start of a run of its own.
COMMANDS = {
    "lesion": ["--no-plain", "--quiet"],
    "convert": ["--finetune-epochs", "1", "--quiet"],
    "expand": ["--batch", "4", "--quiet"],
    "paths": ["--batch", "4", "--quiet"],
    "erf": ["--batch", "2"],
    "reparam": ["--check", "4"],  # --out: a file of the test's own
}
# shift measures every run of a store in one call
SHIFT = ["--corruptions", "shot_noise", "--severity", "1", "--methods", ",".join(choices.SHIFT_METHODS),
         "--batch-size", "8", "--workers", "1", "--threads", "1", "--quiet"]
# What each command declares it cannot take (spec -> why, or None), as it says so; the others take every run.
REFUSES = {"convert": unconvertible}


def _fields(branching, pruning, topology) -> dict:
    branch, reparam = branching
    fields = dict(branch=branch, reparam=reparam, topology=topology)
    if reparam != "none":
        fields["kernel"] = min(DILATED_BRANCHES)
    if pruning != "dense":
        fields.update(prune=PRUNE, density=0.5, prune_structure=pruning)
    return fields


def _name(run) -> str:
    (branch, reparam), pruning, topology = run
    return f"{branch}{'' if reparam == 'none' else '-' + reparam}-{pruning}-{topology}"


def _records(store) -> list:
    with Store(store) as opened:
        return opened.records()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The store and {run: its record}, every run trained with its weights kept."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # networks this small compute fastest on one thread, and a loaded CPU spares it
    store = tmp_path_factory.mktemp("every") / "s.sqlite"
    spec = SweepSpec.from_dict({"name": "every", "defaults": DEFAULTS,
                                "runs": [_fields(*run) for run in RUNS]})
    run_sweep(spec, store, device="cpu", progress=False, save_weights=True, precision="fp32")
    records = _records(store)
    assert len(records) == len(RUNS) and {r.status for r in records} == {"done"}
    configs = {RunConfig.from_dict(r.config): r for r in records}
    yield store, {_name(run): configs[RunConfig(**DEFAULTS, **_fields(*run))] for run in RUNS}
    torch.set_num_threads(threads)


@pytest.mark.parametrize("run", RUNS, ids=_name)
def test_every_runs_weights_load_with_the_parameters_it_recorded(trained, run):
    store, records = trained
    record = records[_name(run)]
    model, config, rid = load_trained(store, record.run_id)
    assert rid == record.run_id and param_count(model) == record.params
    assert model.spec.branch == config.branch and model.spec.topology == config.topology


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_loads_every_run_or_says_why_it_does_not_apply(trained, command, tmp_path, capsys):
    store, records = trained
    before = {r.run_id for r in _records(store)}
    refused = []
    for run in RUNS:
        record = records[_name(run)]
        out = ["--out", str(tmp_path / "merged.pt")] if command == "reparam" else []
        code = main([command, "--store", str(store), "--run", record.run_id, *COMMANDS[command], *out])
        said = capsys.readouterr()
        text = said.out + said.err
        for wrong in ("Traceback", "size mismatch", "train the run again", "retrain"):
            assert wrong not in text, f"{command} on {_name(run)}: {text}"
        why = REFUSES[command](load_trained(store, record.run_id)[0].spec) if command in REFUSES else None
        if why is None:
            assert code == 0, f"{command} on {_name(run)}: {text}"
        else:
            refused.append(_name(run))
            errors = [line for line in said.err.splitlines() if line.startswith("depthlab: error:")]
            assert code == 2 and errors == [f"depthlab: error: {why}"], f"{command} on {_name(run)}: {text}"
    # what the engine trained for the command (convert's fine-tuning) trained: a run that failed is no analysis
    new = [r for r in _records(store) if r.run_id not in before]
    assert {r.status for r in new} <= {"done"}
    if command == "convert":
        assert {_name(run) for run in RUNS if run[2] == "parallel"} <= set(refused)  # shallow already
        # each conversion fine-tuned the network it converted, as it was trained (a crop's narrower one too)
        assert {r.config["init_from"]: r.params for r in new} == \
            {r.run_id: r.params for name, r in records.items() if name not in refused}


def test_shift_measures_every_run(trained, capsys):
    store, records = trained
    ids = sorted(r.run_id for r in records.values())
    assert main(["shift", "--store", str(store), "--runs", ",".join(ids), *SHIFT]) == 0, capsys.readouterr().err
    with Store(store) as opened:
        rows = opened.shift_rows(run_ids=ids)
    assert {(row["run_id"], row["method"]) for row in rows} == set(itertools.product(ids, choices.SHIFT_METHODS))
