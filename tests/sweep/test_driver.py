"""The driver's record step: a result is written only while its runner holds the run, weights included."""

import pytest
import torch

from depthlab.results import weights
from depthlab.spec.config import RunConfig
from depthlab.run.driver import record, rid
from depthlab.train.engine import RunResult
from depthlab.results.store import Store

CONFIG = RunConfig(dataset="synthetic", width=4, epochs=1)
FINAL = {"train_loss": 1.0, "val_loss": 1.0, "train_acc": 0.5, "val_acc": 0.5, "test_loss": 1.0, "test_acc": 0.5}


def result(value: float) -> RunResult:
    return RunResult(config=CONFIG, status="done", final=FINAL, state_dict={"w": torch.full((2,), value)})


def saved(store_path) -> torch.Tensor:
    return torch.load(weights.weights_path(store_path, rid(CONFIG)), weights_only=False)["state_dict"]["w"]


def test_a_runner_that_lost_its_claim_writes_neither_its_row_nor_its_weights(tmp_path):
    """A runner whose claim went stale (and was taken by another) once wrote its weights over the new owner's,
    then reported the result dropped: the store's metrics and the file belonged to different trainings."""
    path = tmp_path / "s.sqlite"
    store = Store(path, stale_after=0.0)
    (run,) = store.add_runs([CONFIG.to_dict()], sweep="s", recipe=2)
    assert store.claim([run], "old") == [run]
    assert store.reclaim_stale() == 1  # "old" looks dead: its run goes back to pending
    assert store.claim([run], "new") == [run]
    assert record(store, "new", result(2.0), path)
    assert not record(store, "old", result(1.0), path)  # the late result of the lost claim
    assert torch.equal(saved(path), torch.full((2,), 2.0))
    assert [p.name for p in weights.weights_dir(path).iterdir()] == [f"{run}.pt"]  # no staged file left
    assert store.records()[0].status == "done"


def test_weights_are_in_place_when_the_row_says_done(tmp_path):
    path = tmp_path / "s.sqlite"
    store = Store(path)
    (run,) = store.add_runs([CONFIG.to_dict()], sweep="s", recipe=2)
    store.claim([run], "me")
    assert record(store, "me", result(3.0), path)
    assert torch.equal(saved(path), torch.full((2,), 3.0))


def test_a_failed_weights_write_leaves_no_partial_file_and_says_why(tmp_path, monkeypatch):
    """#23 bug 12: a full disk during --save-weights surfaced torch's raw RuntimeError and left a partial file."""
    from depthlab.errors import DepthlabError

    def full(obj, path):
        open(path, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    store = tmp_path / "s.sqlite"
    with pytest.raises(DepthlabError, match="cannot write the weights of run 0123456789abcdef .*disk full"):
        weights.stage_weights(store, "0123456789abcdef", RunConfig(), {})
    assert list(weights.weights_dir(store).iterdir()) == []


def test_weights_are_checked_before_use(tmp_path):
    """#23 bug 9: flipped bytes loaded silently (a lesion reported a loss of 6.9e22) and a weights file swapped
    with another run's was analysed under the wrong id."""
    from depthlab.errors import DepthlabError
    from depthlab.models import build

    path = tmp_path / "s.sqlite"
    store = Store(path)
    other = CONFIG.replace(seed=1)
    store.add_runs([CONFIG.to_dict(), other.to_dict()], sweep="s", recipe=2)
    for config in (CONFIG, other):
        store.claim([rid(config)], "me")
        state = build(config.model_spec(), seed=config.seed).state_dict()
        assert record(store, "me", RunResult(config=config, status="done", final=FINAL, state_dict=state), path)
    weights.load_trained(path, rid(CONFIG))  # as written: fine
    mine, theirs = (weights.weights_path(path, rid(c)) for c in (CONFIG, other))
    good = mine.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0xFF
    mine.write_bytes(bytes(flipped))
    with pytest.raises(DepthlabError, match="its checksum is not the one recorded"):
        weights.load_trained(path, rid(CONFIG))
    store.close()
    with Store(path) as s:  # a run trained before checksums were recorded: the config still tells a swap
        s._conn.execute("UPDATE runs SET env = '{}'")
    mine.write_bytes(theirs.read_bytes())
    with pytest.raises(DepthlabError, match="holds the weights of another run"):
        weights.load_trained(path, rid(CONFIG))


def test_a_copy_of_the_database_file_alone_holds_every_finished_pack(tmp_path):
    """#23: after a killed runner every result could still sit in the -wal file, so a backup of the .sqlite file
    alone held nothing; the driver checkpoints after each pack."""
    import shutil

    from depthlab.run.driver import Driver

    path = tmp_path / "s.sqlite"
    store = Store(path)
    (run,) = store.add_runs([CONFIG.to_dict()], sweep="s", recipe=2)
    driver = Driver.__new__(Driver)  # the pieces `finished` uses, without a sweep around them
    driver.store, driver.owner, driver.store_path, driver.save_weights, driver.env = store, "me", path, False, {}
    driver.trained, driver._lock, driver.log, driver.tensorboard = {}, __import__("threading").Lock(), print, None
    driver._heartbeat = type("H", (), {"hold": lambda *a: None})()
    driver.bar = type("B", (), {"finished": lambda *a: None})()
    store.claim([run], "me")
    driver.finished(0, [result(1.0)])
    shutil.copy(path, tmp_path / "backup.sqlite")  # the store stays open, as a killed runner leaves it
    with Store(tmp_path / "backup.sqlite", readonly=True) as backup:
        assert [r.status for r in backup.records()] == ["done"]
