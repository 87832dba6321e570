"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder `step-<N>` holding the trainable weights, the optimizer's moments, the
torch RNG state (all safetensors; nothing is ever unpickled) and `state.json` (step, epoch,
position in the epoch, counters, optimizer hyperparameters). It is written under a temporary
name and renamed into place, so a `kill -9` mid-write leaves the previous checkpoint intact
and never a half one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tailorlm.store.digests import fsync_dir

WEIGHTS, OPTIMIZER, STATE = "trainable.safetensors", "optimizer.safetensors", "state.json"
KEEP = 3  # checkpoints kept on disk; older ones are removed


@dataclass
class Progress:
    """Where a run is: the next optimizer step, and which batch of which epoch it will take."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches of `epoch` already done
    tokens: int = 0  # tokens processed (every token of every example, per epoch)
    trained_tokens: int = 0  # tokens that carried loss
    elapsed: float = 0.0  # seconds of training so far, across resumes
    extra: dict[str, Any] = field(default_factory=dict)


def save(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         progress: Progress) -> Path:
    """Write checkpoint `step` atomically under `folder`; keep only the newest KEEP."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step}"
    tmp = folder / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, str(tmp / WEIGHTS))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    opt_tensors["torch_rng_state"] = torch.get_rng_state()
    save_file(opt_tensors, str(tmp / OPTIMIZER))
    state = {"progress": asdict(progress), "optimizer": opt_meta}
    (tmp / STATE).write_text(json.dumps(state, indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    fsync_dir(folder)
    for old in sorted(list_steps(folder))[:-KEEP]:
        shutil.rmtree(folder / f"step-{old}", ignore_errors=True)
    return target


def list_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints under `folder`, ascending."""
    if not folder.is_dir():
        return []
    steps = []
    for p in folder.iterdir():
        if p.name.startswith("step-") and (p / STATE).is_file():
            try:
                steps.append(int(p.name[5:]))
            except ValueError:
                continue
    return sorted(steps)


def latest(folder: Path) -> Path | None:
    steps = list_steps(folder)
    return folder / f"step-{steps[-1]}" if steps else None


def load(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Progress:
    """Restore weights, optimizer state and RNG from checkpoint folder `path`; return its progress."""
    state = json.loads((path / STATE).read_text())
    weights = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model: {missing[0]} is missing")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    tensors = load_file(str(path / OPTIMIZER))
    torch.set_rng_state(tensors.pop("torch_rng_state"))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    return Progress(**state["progress"])


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, entries in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entries)
    groups = meta["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}
