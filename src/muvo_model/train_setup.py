"""What a run builds before its first step: device and process group, data, batches, model, optimizer, DDP."""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from muvo_model.config import ConfigError, RunConfig
from muvo_model.data.frames import Frames
from muvo_model.faults import Fault
from muvo_model.model import build_model

# -----------------------------------------------------------------------------------------------------------
# Devices and processes


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size, device; rank 0 logs, evaluates and saves."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool = False  # this process started the process group, so it ends it after training

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_dist(device: str) -> Dist:
    """Pick the device; under torchrun (RANK/WORLD_SIZE set) also join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    owns = world > 1 and not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev, owns)


# -----------------------------------------------------------------------------------------------------------
# Data: once, as device tensors


def _synthetic(cfg: RunConfig, n: int, seed: int, offset: int, device: torch.device) -> Frames:
    from muvo_model.data import synthetic

    scfg = synthetic.SyntheticConfig(
        image_size=(cfg.data.image_size, cfg.data.image_size),
        num_points=cfg.data.points,
        anomaly_fraction=cfg.data.anomaly_fraction,
        contrast=cfg.data.contrast,
        anomaly_modality=cfg.data.anomaly_modality,
    )
    return synthetic.generate(n, seed=seed, config=scfg, device=str(device), scenario_offset=offset)


def load_data(cfg: RunConfig, device: torch.device) -> tuple[Frames, Frames]:
    """The training and held-out splits as Frames on ``device`` (held-out = other scenarios).

    Raises:
        ConfigError: the data source cannot be used (e.g. AnoVox without a root).
    """
    if cfg.data.source == "anovox":
        if not cfg.data.root:
            raise ConfigError("data.source='anovox' needs data.root; pass --set data.root=PATH")
        from muvo_model.data import anovox

        try:
            data = anovox.load_anovox(
                cfg.data.root,
                num_points=cfg.data.points,
                image_size=cfg.data.image_size,
                seed=cfg.data.seed,
            )
        except anovox.AnovoxError as exc:  # one line naming the folder and the fix
            raise ConfigError(str(exc)) from None
        print(data.report.summary(), flush=True)
        train, val = data.train.to(device), data.val.to(device)
    else:
        train = _synthetic(cfg, cfg.data.train_frames, cfg.data.seed, 0, device)
        val = _synthetic(cfg, cfg.data.val_frames, cfg.data.seed + 1, 1_000_000, device)
    if device.type == "cuda":  # the layout the convolutions run fastest in
        train.image = train.image.contiguous(memory_format=torch.channels_last)
        val.image = val.image.contiguous(memory_format=torch.channels_last)
    return train, val


class BatchSampler:
    """Epochs of random permutations of [0, n); each step takes the next ``batch`` indices (device tensor).

    Every rank draws the same global batch and keeps its slice, so DDP ranks see disjoint shards.
    """

    def __init__(
        self, n: int, batch: int, seed: int, device: torch.device, rank: int = 0, world: int = 1
    ) -> None:
        if batch % world:
            raise ConfigError(f"train.batch_size={batch} must be divisible by the {world} DDP processes")
        self.n, self.batch, self.device, self.rank, self.world = n, min(batch, n), device, rank, world
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.gen).to(device)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen).to(self.device)  # once per epoch
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return idx.view(self.world, -1)[self.rank]  # this rank's shard of the global batch

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm.cpu(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.perm = state["perm"].to(self.device)
        self.pos = int(state["pos"])


# -----------------------------------------------------------------------------------------------------------
# Model, optimizer, schedule


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def amp_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    if cfg.train.amp == "bf16" or (cfg.train.amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def set_threads(cfg: RunConfig, dist: Dist) -> None:
    """train.threads, or under CPU DDP the cores shared out between this machine's ranks."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    elif dist.world > 1 and dist.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def model_options(cfg: RunConfig) -> dict[str, Any]:
    mk = cfg.model
    if mk.arch == "original":
        return {}
    return {"width": mk.width, "heads": mk.heads, "tokens": mk.tokens, "dropout": mk.dropout}


def build_training(
    cfg: RunConfig, fault: Fault, device: torch.device
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The model (seeded by train.seed), AdamW over what the optimizer should update, warmup + cosine."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model.arch, **model_options(cfg))
    model = fault.model(model)  # FAULT HOOK: the model
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = list(fault.optimizer_params(model))  # FAULT HOOK: what the optimizer updates
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.optim.lr * fault.lr_scale,  # FAULT HOOK: the learning rate
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        weight_decay=cfg.optim.weight_decay,
        fused=device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.optim.warmup_steps, cfg.train.steps, cfg.optim.min_lr_ratio)
    )
    return model, optimizer, scheduler


def wrap(model: nn.Module, dist: Dist, use_compile: bool) -> nn.Module:
    """DistributedDataParallel under torchrun, then torch.compile when asked; the model itself otherwise."""
    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
        )
    if use_compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return net


def leave_group(dist: Dist) -> None:
    """Wait for every rank; end the process group if this process started it.

    The DistributedDataParallel wrapper must be gone (the caller drops it; collect its cycles here)
    before its group is: a gloo group torn down under a live DDP reducer aborts the process at exit
    ("terminate called without an active exception") about one run in three on a loaded machine
    (torch 2.13, measured).
    """
    gc.collect()
    torch.distributed.barrier()
    if dist.owns_group:  # a caller that started the group trains again in it or ends it itself
        torch.distributed.destroy_process_group()
