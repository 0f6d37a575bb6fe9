"""The light commands start fast: `--help` (of depthlab and of every command), `status` and `results` in CSV or
JSON never import torch, matplotlib or scipy. Each check runs in a fresh interpreter, whose modules are its own."""

import json
import subprocess
import sys

from depthlab.cli.main import main
from depthlab.data import available
from depthlab.results.store import Store

HEAVY = ("torch", "matplotlib", "scipy")

# Runs each argv of argv[1] (a JSON list; null: `--help` of depthlab and of each of its commands) through
# `depthlab.cli.main.main`, and prints, as JSON, the heavy modules each one brought in.
CHILD = """
import argparse, contextlib, io, json, sys
from depthlab.cli.main import build_parser, main

HEAVY = %r
argvs = json.loads(sys.argv[1])
if argvs is None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    argvs = [["--help"]] + [[name, "--help"] for name in commands]
found = []
for argv in argvs:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except SystemExit as stop:
        code = stop.code
    found.append([argv, code, [m for m in HEAVY if m in sys.modules]])
print(json.dumps(found))
""" % (HEAVY,)


def imported(argvs, cwd) -> list:
    """[argv, exit code, heavy modules in sys.modules after it] for each argv, run in order in one new process."""
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=120, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def small_store(path) -> str:
    store = Store(path)
    configs = [dict(dataset="synthetic", topology=t, blocks=2, width=4, epochs=1) for t in ("sequential", "parallel")]
    ids = store.add_runs(configs, sweep="tiny", recipe=1)
    store.claim(ids[:1], "me:1:x")
    store.finish(ids[0], "me:1:x", status="done", final=dict(train_loss=1.0, val_loss=1.1, train_acc=0.5,
                                                              val_acc=0.4), history=[{"epoch": 0}], params=100,
                 q=1.0, seconds=0.1, env={"device": "cpu"})
    store.close()
    return str(path)


def test_help_of_depthlab_and_of_every_command_is_light(tmp_path):
    found = imported(None, tmp_path)
    assert {"--help", "run", "data", "status", "results"} <= {argv[0] for argv, _, _ in found}
    assert [(argv, code, heavy) for argv, code, heavy in found if code != 0 or heavy] == []
    found = imported([["data", "corrupt", "--help"], ["data", "verify", "--help"]], tmp_path)
    assert [(argv, code, heavy) for argv, code, heavy in found if code != 0 or heavy] == []


def test_status_and_results_as_csv_or_json_are_light(tmp_path):
    store = small_store(tmp_path / "s.sqlite")
    argvs = [["status", "--store", store], ["results", "--store", store, "--format", "csv"],
             ["results", "--store", store, "--format", "json"]]
    assert imported(argvs, tmp_path) == [[argv, 0, []] for argv in argvs]


def test_the_dataset_names_in_the_data_help_are_the_registry_s(capsys):
    """The CLI reads the light registry (no list of its own): every dataset is named in `data verify --help`."""
    try:
        main(["data", "verify", "--help"])
    except SystemExit:
        pass
    out = " ".join(capsys.readouterr().out.split())
    assert f"one of: {', '.join(available())}" in out and "fashion_mnist" in available()
