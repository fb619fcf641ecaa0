"""Checkpoints: the training state saved atomically, loaded back as tensors and plain values only, resumed."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from muvo_model.config import ConfigError, RunConfig
from muvo_model.train_setup import BatchSampler


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: BatchSampler,
    step: int,
    losses: list[float],
    cfg: RunConfig,
) -> None:
    """Everything a resumed run needs to continue identically, as tensors and plain values only (so
    load_checkpoint can refuse any other pickled object); written atomically (tmp + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "step": step,
        "losses": losses,
        "config": cfg.model_dump(mode="json"),  # plain values: loadable with weights_only=True
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint written by save_checkpoint: tensors and plain values only (``weights_only=True``).

    Raises:
        ConfigError: the file holds other pickled objects (unpickling them could run any code) or is
            not a checkpoint at all; one line naming the file and the fix.
    """
    fix = "delete it, or point train.checkpoint_dir at a folder of muvo-train checkpoints"
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        what = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        obj = f" ({what.group(1)})" if what else ""
        raise ConfigError(
            f"{path}: refused to resume: the checkpoint holds a pickled object{obj}, not only tensors and "
            f"plain values, and loading it could run code; {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0]}); {fix}") from None
    if not isinstance(ck, dict) or not _CHECKPOINT_KEYS <= ck.keys():
        raise ConfigError(f"{path}: not a muvo-train checkpoint (missing {sorted(_CHECKPOINT_KEYS)}); {fix}")
    return ck


_CHECKPOINT_KEYS = frozenset({"model", "optimizer", "scheduler", "sampler", "rng", "step"})


def resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    sampler: BatchSampler,
    device: torch.device,
) -> tuple[int, list[float]]:
    """Restore model, optimizer, scheduler, sampler and RNG, so the continued run is the same run;
    returns the step to continue from and the losses so far."""
    ck = load_checkpoint(path, device)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    sampler.load_state_dict(ck["sampler"])
    torch.set_rng_state(ck["rng"])
    if device.type == "cuda" and ck.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(ck["cuda_rng"], device)
    return int(ck["step"]), list(ck.get("losses", []))
