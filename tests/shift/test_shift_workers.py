"""`depthlab shift --workers`: runs measured side by side in processes of their own give the rows one process
gives. The measurements are in float32 whatever the CPU (`--precision fp32`), so this runs once, not per kind."""

import pytest

from depthlab.cli.main import main
from depthlab.results.store import Store


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPTHLAB_DATA", str(tmp_path / "data"))


def shift(store, *args):
    return main(["shift", "--store", str(store), "--quiet", *map(str, args)])


def test_runs_measured_side_by_side_give_the_rows_measured_one_by_one(tmp_path, make_store):
    """`--workers 2` measures each run in a process of its own: the same rows as one process, to float32
    round-off (a spawned process may take other vectorised kernels than the pytest process, which the
    precision fixture holds to one kind of CPU)."""
    rows = {}
    for workers in (1, 2):
        store = tmp_path / f"w{workers}.sqlite"
        make_store(store)
        assert shift(store, "--corruptions", "stripe", "--severity", "5", "--methods", "source,alpha_bn,tent",
                     "--batch-size", "1,8", "--examples", "16", "--workers", workers, "--precision", "fp32") == 0
        with Store(store) as s:
            rows[workers] = {(r["run_id"], r["method"], r["batch_size"]): (r["accuracy"], r["loss"])
                             for r in s.shift_rows()}
    assert len(rows[1]) == 2 * 3 * 2
    assert rows[2].keys() == rows[1].keys()
    for key, (acc, loss) in rows[1].items():
        assert rows[2][key] == pytest.approx((acc, loss), rel=1e-5), key
