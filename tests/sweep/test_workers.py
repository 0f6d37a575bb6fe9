"""Packs trained side by side (depthlab.run.workers): every pack once, errors and stops reach the caller with no
thread left running, and a run's results do not depend on how many packs trained beside it."""

import signal
import threading
import time

import pytest
import torch

from depthlab.data import load
from depthlab.errors import DepthlabError
from depthlab.records import METRICS
from depthlab.train import engine, packs
from depthlab.spec.config import RunConfig
from depthlab.train.engine import train_pack
from depthlab.run.runner import plan, resolve_device, run_sweep
from depthlab.spec.grid import SweepSpec
from depthlab.results.store import Store
from depthlab.run.workers import Stopped, Workers, default_workers, intra_op_threads

SPEC = {"name": "w", "defaults": {"dataset": "synthetic", "val_split": 32, "train_subset": 128, "test_subset": 32,
                                  "width": 4, "stem_stride": 2, "batch_size": 32, "epochs": 2},
        "grid": {"topology": ["sequential", "parallel"], "seed": [0, 1, 2]}}


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("depthlab-worker")]


def no_worker_left(timeout=5.0) -> bool:
    """The workers have set their end; give their threads the moment they take to return."""
    deadline = time.time() + timeout
    while worker_threads() and time.time() < deadline:
        time.sleep(0.01)
    return not worker_threads()


def until_stopped(check, seconds=60.0):
    """A long pack's loop: `check()` until it raises (the worker was told to stop); a worker never told fails
    the test after `seconds` instead of holding the suite."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(0.01)
    raise AssertionError(f"a worker was not stopped within {seconds:.0f} s")


def test_every_item_is_worked_once_across_the_threads():
    seen, names = [], set()

    def work(item):
        names.add(threading.current_thread().name)
        time.sleep(0.01)  # long enough that both threads take items
        seen.append(item)

    Workers(2).run(iter(range(20)), work)
    assert sorted(seen) == list(range(20))
    assert len(names) == 2 and no_worker_left()


def test_one_worker_works_in_the_calling_thread():
    names = []
    Workers(1).run(range(3), lambda item: names.append(threading.current_thread().name))
    assert names == [threading.current_thread().name] * 3


def test_a_workers_error_stops_the_others_and_is_raised_in_the_caller():
    pool = Workers(2)
    started = []

    def work(item):
        started.append(item)
        if item == 0:
            raise ValueError("pack 0 broke")
        until_stopped(pool.check)  # a long pack: stops at its next check

    with pytest.raises(ValueError, match="pack 0 broke"):
        pool.run(iter(range(10)), work)
    assert len(started) <= 3 and no_worker_left()  # nothing new was started once the error was seen


class Interrupt(BaseException):
    """Stands for Ctrl-C (a KeyboardInterrupt would end pytest's own run)."""


def test_an_interrupt_in_the_caller_stops_the_workers_and_waits_for_them():
    pool = Workers(2)
    checks = []

    def work(item):
        def check():
            checks.append(item)
            pool.check()

        until_stopped(check)

    def interrupt(signum, frame):
        raise Interrupt()

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupt):
            pool.run(iter(range(10)), work)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not worker_threads()  # run() returned only after every worker had ended
    assert set(checks) == {0, 1}
    with pytest.raises(Stopped):
        pool.check()


def test_the_default_is_two_workers_on_a_cpu_one_on_a_gpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert default_workers(cpu, runs=20) == 2
    assert default_workers(cpu, runs=1) == 1
    assert default_workers(torch.device("cuda"), runs=20) == 1
    with pytest.raises(DepthlabError, match="side by side is for CPUs"):
        default_workers(torch.device("cuda"), runs=20, asked=2)
    assert default_workers(cpu, runs=20, asked=3) == 3 and default_workers(cpu, runs=2, asked=3) == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert default_workers(cpu, runs=20) == 1
    with pytest.raises(ValueError, match="at least 1"):
        default_workers(cpu, runs=20, asked=0)


def test_intra_op_threads_are_restored():
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    with intra_op_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before


def test_packs_are_even_and_a_lone_shape_is_spread_over_the_workers():
    runs = [RunConfig(dataset="synthetic", seed=s) for s in range(5)]
    assert [len(p) for p in packs.split(runs, 4)] == [3, 2]
    assert [len(p) for p in packs.split(runs, 2)] == [2, 2, 1]
    assert [len(p) for p in packs.split(runs, 8)] == [5]
    assert [len(p) for p in packs.split(runs[:2], 4, at_least=2)] == [1, 1]
    assert [len(p) for p in packs.split(runs[:1], 4, at_least=2)] == [1]
    assert packs.split([], 4) == []
    cpu = resolve_device("cpu")
    one_shape = SweepSpec.from_dict({**SPEC, "grid": {"seed": [0, 1, 2]}})
    assert [len(p) for p in plan(one_shape, None, cpu, add=False, precision="bf16", workers=2).packs] == [2, 1]
    assert [len(p) for p in plan(one_shape, None, cpu, add=False, precision="bf16", workers=1).packs] == [3]


@pytest.mark.parametrize("topology", ["sequential", "parallel"])
def test_float32_training_is_the_same_on_one_intra_op_thread_or_two(topology):
    data = load("synthetic", val_split=32, n_train=128, n_test=32, shape=(1, 12, 12))
    configs = [RunConfig(dataset="synthetic", width=4, batch_size=32, epochs=2, seed=s, topology=topology)
               for s in range(2)]
    results = {}
    for threads in (1, 2):
        with intra_op_threads(threads):
            results[threads] = train_pack(configs, data, precision="fp32", keep_weights=True)
    for one, two in zip(results[1], results[2]):  # the weights bit for bit
        assert all(torch.equal(one.state_dict[k], two.state_dict[k]) for k in one.state_dict)
        # an evaluation's sums may be split differently among threads: equal to float32 round-off
        assert one.final == pytest.approx(two.final, rel=1e-5)


@pytest.mark.parametrize("fields", [{}, {"prune": "precrop_params", "density": 0.5}, {"prune": "snip", "density": 0.5}])
def test_training_leaves_the_global_rng_alone(fields, tmp_path):
    """What lets packs train side by side and learn what they learn alone: nothing in the engine draws from the
    global RNG, which another worker may be holding seeded to build a model (depthlab.models.rng); nor does
    loading a trained run's weights to start from."""
    from depthlab.results import weights

    data = load("synthetic", val_split=32, n_train=128, n_test=32, shape=(1, 12, 12))
    configs = [RunConfig(dataset="synthetic", width=4, batch_size=32, epochs=1, seed=s, topology="parallel",
                         **fields) for s in range(2)]
    before = torch.random.get_rng_state()
    results = train_pack(configs, data, precision="fp32", keep_weights=True)
    assert torch.equal(torch.random.get_rng_state(), before)
    weights.save_weights(tmp_path / "s.sqlite", "0123abcd", configs[0], results[0].state_dict)
    weights.load_trained(tmp_path / "s.sqlite", "0123abcd", data)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_models_built_while_another_thread_packs_are_the_models_of_their_seed():
    from depthlab.models import build, pack

    spec = RunConfig(dataset="synthetic", width=4, topology="parallel").model_spec(
        in_channels=1, input_size=12, num_classes=10)
    reference = build(spec, seed=3).state_dict()
    done, mismatches = threading.Event(), []

    def keep_packing():
        while not done.is_set():
            pack([build(spec, seed=1), build(spec, seed=2)])

    packer = threading.Thread(target=keep_packing)
    packer.start()
    try:
        for _ in range(30):
            state = build(spec, seed=3).state_dict()
            mismatches += [k for k in reference if not torch.equal(state[k], reference[k])]
    finally:
        done.set()
        packer.join()
    assert mismatches == []


def finals(store_path) -> dict:
    with Store(store_path, readonly=True) as store:
        return {r.run_id: ({m: r.metric(m) for m in (*METRICS, "geometric_complexity")}, r.env)
                for r in store.records()}


def test_a_sweep_learns_the_same_with_two_workers_and_records_them(tmp_path):
    spec = SweepSpec.from_dict(SPEC)
    run_sweep(spec, tmp_path / "one.sqlite", device="cpu", precision="fp32", progress=False, workers=1)
    threads = torch.get_num_threads()
    summary = run_sweep(spec, tmp_path / "two.sqlite", device="cpu", precision="fp32", progress=False, workers=2)
    assert torch.get_num_threads() == threads and summary["workers"] == 2
    one, two = finals(tmp_path / "one.sqlite"), finals(tmp_path / "two.sqlite")
    assert one.keys() == two.keys() and len(one) == 6
    for run in one:  # the same training; the evaluations' sums to float32 round-off (see above)
        assert one[run][0] == pytest.approx(two[run][0], rel=1e-5)
        assert one[run][1]["workers"] == 1 and one[run][1]["threads"] == threads
        assert two[run][1]["workers"] == 2 and two[run][1]["threads"] == max(1, threads // 2)


def test_a_failed_pack_beside_a_good_one_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = engine.train_pack

    def broken_for_parallel(configs, *args, **kwargs):
        if configs[0].topology == "parallel":
            raise RuntimeError("a broken pack")
        return real(configs, *args, **kwargs)

    monkeypatch.setattr(engine, "train_pack", broken_for_parallel)
    summary = run_sweep(SweepSpec.from_dict(SPEC), tmp_path / "s.sqlite", device="cpu", precision="fp32",
                        progress=False, workers=2, log=lambda m: None)
    assert summary["trained"] == {"done": 3, "diverged": 0, "failed": 3}
    counts = Store(tmp_path / "s.sqlite").counts()
    assert (counts["done"], counts["failed"], counts["pending"], counts["running"]) == (3, 3, 0, 0)
    assert no_worker_left()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # packs of 2 and of 4 by default on a CPU
def test_a_device_error_in_one_worker_stops_the_sweep_and_gives_every_run_back(tmp_path, monkeypatch, precision):
    calls, lock = [], threading.Lock()
    both_started = threading.Barrier(2, timeout=60)  # each worker holds a pack, however the runs were packed

    def broken(configs, *args, interrupt=None, **kwargs):
        with lock:
            calls.append(configs)
            call = len(calls)
        if call <= 2:
            both_started.wait()
        if call == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        until_stopped(interrupt)  # the other worker's pack: stopped at its next step

    monkeypatch.setattr(engine, "train_pack", broken)
    store = tmp_path / "s.sqlite"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        run_sweep(SweepSpec.from_dict(SPEC), store, device="cpu", progress=False, workers=2, log=lambda m: None,
                  precision=precision)
    assert len(calls) == 2  # nothing new was started once the error was seen
    assert Store(store).counts()["pending"] == 6 and no_worker_left()
