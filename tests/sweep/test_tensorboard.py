"""`depthlab run --tensorboard DIR`: each trained run's epochs as TensorBoard scalars under DIR/RUN_ID, read back
with TensorBoard's own reader and checked against the store's histories."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

import depthlab  # noqa: E402
from depthlab.cli.main import main  # noqa: E402
from depthlab.results.store import Store  # noqa: E402
from depthlab.run.driver import rid  # noqa: E402
from depthlab.spec.grid import SweepSpec  # noqa: E402

SPEC = {"name": "tiny", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 256,
                                     "test_subset": 64, "width": 4, "stem_stride": 2,
                                     "batch_size": 32, "epochs": 2},
        "grid": {"topology": ["sequential", "parallel"], "seed": [0, 1, 2]}}
SCALARS = {"train_loss", "train_acc", "val_loss", "val_acc", "seconds", "train_seconds"}
# a module finder that refuses tensorboard, then depthlab's command line: a machine without the extra
WITHOUT_TENSORBOARD = """
import sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Refuse())
from depthlab.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def write_spec(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def run(spec, store, board, *more):
    return main(["run", str(spec), "--store", str(store), "--tensorboard", str(board), "--quiet", "--no-compare",
                 *map(str, more)])


def events(directory):
    """TensorBoard's reader of one run's directory, loaded."""
    return EventAccumulator(str(directory)).Reload()


def histories(store):
    with Store(store, readonly=True) as s:
        return {r.run_id: r.history for r in s.records()}


def event_files(directory):
    return {p.name: p.read_bytes() for p in directory.glob("events.out.tfevents.*")}


def test_each_run_logs_its_history_as_its_epochs_end_and_a_resume_adds_only_new_runs(tmp_path):
    spec, store, board = write_spec(tmp_path), tmp_path / "s.sqlite", tmp_path / "tb"
    assert run(spec, store, board, "--limit", "2") == 0
    first = {run_id for run_id, history in histories(store).items() if history}  # the two runs trained
    assert {p.name for p in board.iterdir()} == first and len(first) == 2
    before = {run_id: event_files(board / run_id) for run_id in first}
    # a run that a stopped runner left half-written: its curves are replaced when it trains again
    with Store(store, readonly=True) as s:
        stale = next(r.run_id for r in s.records() if r.status == "pending")
    with SummaryWriter(str(board / stale)) as writer:
        for step in (1, 2, 3):
            writer.add_scalar("val_loss", 99.0, step)

    assert run(spec, store, board) == 0
    runs = histories(store)
    assert {p.name for p in board.iterdir()} == set(runs) and len(runs) == 6
    assert {run_id: event_files(board / run_id) for run_id in first} == before  # finished: not written again
    for run_id, history in runs.items():
        assert len(event_files(board / run_id)) == 1
        logged = events(board / run_id)
        assert set(logged.Tags()["scalars"]) == SCALARS
        for tag in SCALARS:
            scalars = logged.Scalars(tag)
            assert [s.step for s in scalars] == [1, 2]
            assert [s.value for s in scalars] == [float(np.float32(h[tag])) for h in history]
        # written as each epoch ended: the second epoch's scalars come a whole epoch after the first's
        first_epoch, second_epoch = logged.Scalars("val_loss")
        assert second_epoch.wall_time - first_epoch.wall_time >= history[1]["seconds"]


def test_the_api_writes_the_runs_sweep_and_config(tmp_path):
    spec = {**SPEC, "grid": {"seed": [0, 1]}}
    runs = depthlab.run_sweep(spec, tmp_path / "s.sqlite", device="cpu", progress=False,
                              tensorboard=tmp_path / "tb", log=lambda message: None)
    assert len(runs) == 2
    for run_id, seed in zip(runs["run_id"], runs["seed"]):
        logged = events(tmp_path / "tb" / run_id)
        assert [s.step for s in logged.Scalars("val_acc")] == [1, 2]
        text = logged.Tensors("run/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f"run `{run_id}` of sweep `tiny`" in text
        assert json.loads(text.split("```json\n")[1].split("```")[0])["seed"] == seed
        # the config as hparams, for TensorBoard's HParams tab
        start = logged.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
        hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hparams["seed"].number_value == seed and hparams["sweep"].string_value == "tiny"


def test_without_the_tensorboard_package_the_run_is_refused_before_it_trains(tmp_path):
    store = tmp_path / "s.sqlite"
    done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORBOARD, "run", str(write_spec(tmp_path)),
                           "--store", str(store), "--tensorboard", str(tmp_path / "tb"), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("pip install 'depthlab[tensorboard]'")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not store.exists() and not (tmp_path / "tb").exists()


def test_a_log_directory_that_cannot_be_made_is_refused(tmp_path, capsys):
    taken = tmp_path / "a-file"
    taken.write_text("")
    store = tmp_path / "s.sqlite"
    assert run(write_spec(tmp_path), store, taken / "tb") == 2
    assert f"--tensorboard {taken / 'tb'}: cannot make this directory" in capsys.readouterr().err
    assert not store.exists()


def test_a_log_that_cannot_be_written_stops_the_logging_not_the_sweep(tmp_path):
    spec = {**SPEC, "grid": {"seed": [0, 1]}}
    blocked = rid(SweepSpec.from_dict(spec).configs()[0])
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / blocked).write_text("")  # a file where the run's log directory would go
    said = []
    runs = depthlab.run_sweep(spec, tmp_path / "s.sqlite", device="cpu", progress=False,
                              tensorboard=tmp_path / "tb", log=said.append)
    assert list(runs["status"]) == ["done", "done"]
    said = [m for m in said if m.startswith("TensorBoard")]
    assert len(said) == 1 and said[0].startswith(f"TensorBoard: cannot write {tmp_path / 'tb' / blocked} (")
    assert said[0].endswith("); the sweep goes on without TensorBoard logs (every result is in the store)")
