"""Trained weights next to a store: `STORE.weights/RUN_ID.pt` (written by `depthlab run --save-weights`)."""

from __future__ import annotations

from pathlib import Path

import torch

from depthlab.errors import DepthlabError
from depthlab.models import ResidualNet, build
from depthlab.sweep.config import RunConfig


def weights_dir(store_path) -> Path:
    return Path(f"{store_path}.weights")


def save_weights(store_path, rid: str, config: RunConfig, state_dict: dict) -> Path:
    """Write, then rename: a killed process never leaves a half-written file under the final name."""
    folder = weights_dir(store_path)
    folder.mkdir(exist_ok=True)
    final = folder / f"{rid}.pt"
    tmp = folder / f"{rid}.pt.tmp"
    torch.save({"config": config.to_dict(), "state_dict": state_dict}, tmp)
    tmp.replace(final)
    return final


def load_trained(store_path, run: str, dataset=None) -> tuple[ResidualNet, RunConfig, str]:
    """The trained model of run `run` (its id or a unique prefix), its config and full id.

    `dataset` (a loaded `depthlab.data.Dataset`) supplies the input shape when the run's dataset is not the
    built-in shape (e.g. synthetic data of another size)."""
    folder = weights_dir(store_path)
    matches = sorted(folder.glob(f"{run}*.pt")) if folder.exists() else []
    if not matches:
        raise DepthlabError(f"run {run!r}: no saved weights under {folder}; train with "
                            "`depthlab run ... --save-weights` to keep them")
    if len(matches) > 1:
        raise DepthlabError(f"run {run!r} is ambiguous: " + ", ".join(m.stem for m in matches[:5]))
    saved = torch.load(matches[0], map_location="cpu", weights_only=True)
    config = RunConfig.from_dict(saved["config"])
    spec = config.model_spec() if dataset is None else config.model_spec(
        dataset.in_channels, dataset.input_size, dataset.num_classes)
    model = build(spec)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), config, matches[0].stem
