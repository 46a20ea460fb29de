"""Data parallelism on torch.distributed: gloo on CPU, NCCL on GPUs, one replica per process (torchrun's workers).

One training step on several workers (:func:`train_step`): each worker computes its shard's loss and gradients,
then ONE all-reduce (SUM, divided by the workers) carries every gradient, the running statistics of per-replica
BatchNorm, the shard's loss and the worker's stop request; every worker then applies the same optimizer update.
So the update is the global batch's (equal shards), the running statistics are the mean of the replicas' own
updates (as tf.distribute's MEAN aggregation makes them in backends/tf/distributed.py), the logged loss is the
global batch's mean, and all workers agree, at the same step, to stop (SIGINT/SIGTERM reaching any of them).

Synchronised BatchNorm (cnn.py, ``model.bn_sync``) all-reduces its per-channel sums in the forward pass and
their gradients in the backward pass (:func:`sync_moments`). ``nn.SyncBatchNorm`` would do the same on GPUs
only: it refuses CPU modules.

Mirrors backends/tf/distributed.py name for name (tests/backends/test_mirror.py).
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dualkit.core.distributed import SINGLE, World, timeout_s
from dualkit.core.errors import BackendError


class _Engine:
    """The process's distributed state (one process, one world)."""

    world: World = SINGLE
    stop_out: bool = False  # this worker asks to stop (sent with its next step)
    stop_in: bool = False  # some worker asked, as of the last step
    in_step: bool = False


_engine = _Engine()


def start(world: World, device: str) -> None:
    """Join ``world``'s process group (torchrun's MASTER_ADDR/MASTER_PORT rendezvous): gloo on CPU, NCCL on
    GPU (each process on the GPU of its LOCAL_RANK). A single-process world starts nothing."""
    if world.local_replicas != 1:
        raise BackendError("torch runs one replica per process; launch one worker process per device")
    if world.size > 1 and not dist.is_initialized():
        gpu = device == "gpu" or (device == "auto" and torch.cuda.is_available())
        if gpu:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(
            "nccl" if gpu else "gloo",
            rank=world.rank,
            world_size=world.size,
            timeout=datetime.timedelta(seconds=timeout_s()),
        )
    _engine.world = world
    _engine.stop_out = _engine.stop_in = False


def stop() -> None:
    """Leave the process group (after the run; a no-op where none was joined)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    _engine.world = SINGLE


def replicas() -> int:
    """Replicas training together (1: no distributed engine running)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def in_step() -> bool:
    """Whether a distributed training step is running now (BatchNorm synchronises only then: an evaluation
    that one worker runs alone must not wait for the others)."""
    return _engine.in_step


def barrier() -> None:
    """Wait until every worker got here (a no-op on one)."""
    if replicas() > 1:
        dist.barrier()


def request_stop(flag: bool) -> None:
    """Ask (``flag``) to stop after the next step; the request travels with that step's all-reduce."""
    _engine.stop_out = bool(flag)


def stop_requested() -> bool:
    """Whether any worker asked to stop, as of the last step (so all stop after the same step)."""
    return _engine.stop_in


class _AllReduceSum(torch.autograd.Function):
    """The sum over workers, differentiable: the gradient of a sum over workers is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def sync_moments(
    x: torch.Tensor, vis: torch.Tensor | None = None, shift: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of NCHW ``x`` over every worker's batch (only the positions where
    ``vis``, (N, 1, H, W) of 0/1, is 1), and the count; one all-reduce of the sums of ``x - shift`` and of its
    squares (``shift``, e.g. the running mean, keeps the one-pass variance accurate)."""
    c = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device) if shift is None else shift.detach()
    xc = x - c[None, :, None, None]
    if vis is not None:
        xc = xc * vis
        n = vis.sum().reshape(1)
    else:
        n = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
    total = _AllReduceSum.apply(torch.cat([xc.sum(dim=(0, 2, 3)), (xc * xc).sum(dim=(0, 2, 3)), n.detach()]))
    channels = x.shape[1]
    count = total[-1]
    m = total[:channels] / count
    return c + m, total[channels : 2 * channels] / count - m * m, count


def assign_running(variable: torch.Tensor, value: torch.Tensor) -> None:
    """Set a running statistic (BatchNorm's) to ``value``. Per-replica values are averaged over the workers at
    the end of the step (:func:`train_step`), so this is a plain in-place copy."""
    with torch.no_grad():
        variable.copy_(value)


def _replica_buffers(net: nn.Module) -> list[torch.Tensor]:
    """The running statistics each replica updates from its own shard: every BatchNorm's but the synchronised
    ones' (equal on every worker already)."""
    return [
        b
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not getattr(m, "sync", False)
        for b in (m.running_mean, m.running_var)
        if b is not None
    ]


def train_step(model: Any, arrays: tuple[np.ndarray, ...], lr: float) -> float:
    """One data-parallel optimizer update of a ModelState ``model`` (backends/torch/model.py) on this worker's
    shard ``arrays`` (what ``model._loss`` takes); returns the loss of the global batch (the mean of the
    shards' losses) before the update."""
    _engine.in_step = True
    try:
        loss = model._loss(*arrays)
        loss.backward()
    finally:
        _engine.in_step = False
    params = list(model.params.values())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    buffers = _replica_buffers(model.net)
    flag = torch.ones(1) if _engine.stop_out else torch.zeros(1)
    parts = grads + buffers
    flat = torch.cat([t.reshape(-1) for t in parts] + [loss.detach().reshape(1), flag.to(loss)])
    dist.all_reduce(flat)
    flat /= replicas()
    with torch.no_grad():
        offset = 0
        for t in parts:
            t.copy_(flat[offset : offset + t.numel()].view(t.shape))
            offset += t.numel()
    _engine.stop_in = bool(flat[-1].item() > 0)
    model.optimizer.apply(grads, lr)
    return float(flat[-2].item())
