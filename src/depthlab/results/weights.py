"""Trained weights next to a store: `STORE.weights/RUN_ID.pt` (written by `depthlab run --save-weights`).

A run id names a file here only after it has been checked to be an id (hex digits): it is never used as a path
or a glob pattern, so no id can reach a file outside the folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import torch

from depthlab.errors import DepthlabError
from depthlab.records import config_id
from depthlab.models import ModelSpec, ResidualNet
from depthlab.models.rng import blank
from depthlab.spec.config import RunConfig

_ID = re.compile(r"^[0-9a-f]{1,16}$")


def weights_dir(store_path) -> Path:
    return Path(f"{os.path.realpath(store_path)}.weights")  # beside the real file: a symlinked store has one folder


def weights_path(store_path, rid: str) -> Path:
    if not _ID.match(rid or ""):
        raise DepthlabError(f"run {rid!r}: not a run id (up to 16 hex digits, as `depthlab results` lists them)")
    return weights_dir(store_path) / f"{rid}.pt"


def has_weights(store_path, rid: str) -> bool:
    return weights_path(store_path, rid).is_file()


def save_weights(store_path, rid: str, config: RunConfig, state_dict: dict) -> Path:
    """Write, then rename: a killed process never leaves a half-written file under the final name."""
    final = weights_path(store_path, rid)
    staged = stage_weights(store_path, rid, config, state_dict)
    staged.replace(final)
    return final


def stage_weights(store_path, rid: str, config: RunConfig, state_dict: dict, spec: dict | None = None) -> Path:
    """The weights written under a name of their own in the weights folder (hidden, unique to this call), to be
    renamed into place (`weights_path`) only once the run is known to be the writer's: two runners that trained
    the same run never write over each other's file."""
    final = weights_path(store_path, rid)
    final.parent.mkdir(exist_ok=True)
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{rid}.", suffix=".pt.part")
    os.close(fd)
    staged = Path(name)
    try:
        # the network's own spec too: a crop-pruned run's widths come from its mask, not from its config
        torch.save({"config": config.to_dict(), "state_dict": state_dict,
                    **({"spec": dict(spec)} if spec is not None else {})}, staged)
    except (OSError, RuntimeError) as err:
        staged.unlink(missing_ok=True)
        # torch's zip writer reports a failed write (a full disk) as a RuntimeError, not an OSError
        if isinstance(err, RuntimeError) and "PytorchStreamWriter failed" not in str(err):
            raise
        why = err.strerror if isinstance(err, OSError) and err.strerror else "the write failed (is the disk full?)"
        raise DepthlabError(f"cannot write the weights of run {rid} to {final}: {why}") from err
    return staged


def resolve(store_path, run: str) -> Path:
    """The weights file of run `run`: its full id or a unique prefix of one."""
    weights_path(store_path, run)  # validates the id
    folder = weights_dir(store_path)
    matches = _named(folder, run)
    if not matches and _renamed_now(store_path, run):
        matches = _named(folder, run)
    if not matches:
        raise DepthlabError(f"run {run!r}: no saved weights under {folder}; train with "
                            "`depthlab run ... --save-weights` to keep them")
    if len(matches) > 1:
        raise DepthlabError(f"run {run!r} is ambiguous: " + ", ".join(m.stem for m in matches[:5]))
    return matches[0]


def _named(folder: Path, run: str) -> list[Path]:
    names = sorted(os.listdir(folder)) if folder.is_dir() else []
    return [folder / n for n in names if n.endswith(".pt") and n.startswith(run)]


def _renamed_now(store_path, run: str) -> bool:
    """For a run without weights under that name, whose id store schema 5 changed (`depthlab.results.store`): an
    old id is refused, naming the new one; the new id of a store not opened for writing since it was written by an
    older depthlab opens it once for writing, as any command that trains would, which renames the weights. True
    when it did."""
    from depthlab.results.store import Store

    if not os.path.isfile(store_path):
        return False
    with Store.existing(store_path, readonly=True) as store:  # an older store: its migrated in-memory copy
        rekeyed = store.rekeyed()
    now = sorted({new for old, new, _ in rekeyed if old.startswith(run)})
    if now:
        raise DepthlabError(f"run {run!r} is run {' or '.join(now)} now: run ids leave out the fields at their "
                            "neutral value since store schema 5, which gave stored runs new ids; name it by its "
                            "new id (`depthlab results` lists them)")
    if not any(new.startswith(run) and not renamed for _, new, renamed in rekeyed):
        return False
    Store(store_path).close()
    return True


def load_trained(store_path, run: str, dataset=None) -> tuple[ResidualNet, RunConfig, str]:
    """The trained model of run `run` (its id or a unique prefix), in eval mode, its config and full id.

    `dataset` (a loaded `depthlab.data.Dataset`) supplies the input shape when the run's dataset is not the
    built-in shape (e.g. synthetic data of another size)."""
    path = resolve(store_path, run)
    recorded = _recorded(store_path, path.stem)
    _check_digest(path, recorded, store_path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        config = RunConfig.from_dict(saved["config"])
        if "spec" in saved:  # the network as trained (a cropped run's narrower one)
            spec = ModelSpec.from_dict({k: tuple(v) if isinstance(v, list) else v for k, v in saved["spec"].items()})
        elif config.cropped:
            raise DepthlabError(f"{path}: a crop-pruned run saved before its cropped widths were kept with its "
                                f"weights; {_RETRAIN.format(store=store_path)}")
        else:
            spec = config.model_spec() if dataset is None else config.model_spec(
                dataset.in_channels, dataset.input_size, dataset.num_classes)
        model = blank(ResidualNet, spec)  # its weights are the file's: nothing drawn from the global RNG
        model.load_state_dict(saved["state_dict"])
    except DepthlabError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file is the user's to fix
        raise DepthlabError(f"{path}: not a readable depthlab weights file ({type(err).__name__}: {err}); "
                            "delete it and train the run again with --save-weights") from None
    if recorded is not None and _identity(saved["config"]) != _identity(recorded.config):
        raise DepthlabError(f"{path}: holds the weights of another run (its config is not run {path.stem}'s: a "
                            f"swapped or copied file); {_RETRAIN.format(store=store_path)}")
    return model.eval(), config, path.stem


def _identity(config) -> str:
    """What tells a run's weights from another run's: its config id without `init_from`, which schema 5 rewrote
    in the store (to the new id of the run it starts from) but not in the files written before."""
    return config_id({k: v for k, v in dict(config).items() if k != "init_from"})


_RETRAIN = "delete it, and `depthlab run SPEC --store {store} --save-weights` trains the run again"


def file_digest(path) -> str:
    """sha256 of a file's bytes: recorded with a run when its weights are written (env `weights_sha256`)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _recorded(store_path, run_id: str):
    """The store's record of `run_id`, or None (no store file, or no such run): what the file is checked against."""
    from depthlab.results.store import Store

    if not os.path.isfile(store_path):
        return None
    with Store(store_path, readonly=True) as store:
        found = store.records(run_ids=[run_id])
    return found[0] if found else None


def _check_digest(path: Path, recorded, store_path) -> None:
    """Refuse a file whose bytes are not those written when the run was trained (runs trained before the
    checksum was recorded are not checked)."""
    digest = recorded.env.get("weights_sha256") if recorded is not None else None
    if digest and file_digest(path) != digest:
        raise DepthlabError(f"{path}: its checksum is not the one recorded when run {path.stem} was trained (the "
                            f"file is corrupt or was replaced); {_RETRAIN.format(store=store_path)}")
