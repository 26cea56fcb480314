"""Data-parallel training on ``torch.distributed`` (launched with ``torchrun``).

This module is the one place that knows whether the process is one rank of several.
Without ``torchrun`` (no process group) every function answers as a single process:
rank 0 of 1, main process, barriers are no-ops, reductions return their input.

The scheme (docs/distributed.md): every rank draws the *same* global minibatch and the
same input encoding (the trainer's generator is seeded identically everywhere), computes
gradients on its contiguous :func:`shard` of the batch only, and the gradients are
combined weighted by shard size (:func:`reduce_gradients`), which gives the gradient of
the global batch-mean loss. Statistics plugins collect from the rank's shard are reduced
where they are used (gathered activity for HLOP's Hebbian rule, summed firing counts for
the dormant monitor, a summed Fisher for EWC, gathered representations for GPM); masks
and bases decided from identical inputs are broadcast from rank 0 so they are identical.

Every collective here is called by all ranks in the same order (the code paths that
call them depend only on step counters and configuration, never on a rank's data).
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist

from .errors import UserError

__all__ = [
    "is_distributed", "rank", "world_size", "is_main", "barrier", "init_from_env", "shutdown", "backend_for",
    "shard_sizes", "shard", "all_reduce", "weighted_sum", "broadcast", "broadcast_tensor", "all_gather",
    "all_gather_object", "any_rank", "reduce_gradients", "sync_module",
]

#: the variables ``torchrun`` sets for every worker
_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_LAUNCH = "launch with torchrun --nproc-per-node N -m neuroplastic run ..."


def is_distributed() -> bool:
    """Whether a process group of more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files and prints results."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


# -- the process group --------------------------------------------------------------------
def _env_int(name: str, low: int = 0) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        v = int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer ({_LAUNCH})") from None
    if v < low:
        raise UserError(f"environment variable {name}={v} must be >= {low} ({_LAUNCH})")
    return v


def backend_for(device: str | torch.device) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` for the CPU (one line otherwise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device {device!r} is not a torch device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        return "nccl"
    if dev.type == "cpu":
        return "gloo"
    raise UserError(f"data-parallel training runs on cpu (gloo) or cuda (nccl), not on device {device!r}")


def init_from_env(device: str | torch.device = "cpu", timeout_s: float | None = None) -> bool:
    """Join the process group described by ``torchrun``'s environment variables.

    Does nothing (returns ``False``) without ``WORLD_SIZE`` or with ``WORLD_SIZE=1``: a
    plain ``neuroplastic run`` is one process. Otherwise initialises ``torch.distributed``
    with ``gloo`` when ``device`` is the CPU and ``nccl`` when it is CUDA (each rank then
    uses ``cuda:LOCAL_RANK``), registers :func:`shutdown` at exit and returns ``True``.
    A misconfigured environment raises :class:`~neuroplastic.errors.UserError` (one line).
    """
    world = _env_int("WORLD_SIZE", low=1)
    if world is None or world == 1:
        return False
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        if dist.get_world_size() != world:
            raise UserError(f"a process group of {dist.get_world_size()} ranks exists but WORLD_SIZE={world}")
        return True
    r = _env_int("RANK")
    if r is None:
        raise UserError(f"WORLD_SIZE={world} but RANK is not set ({_LAUNCH})")
    if r >= world:
        raise UserError(f"RANK={r} is not below WORLD_SIZE={world}")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(key):
            raise UserError(f"WORLD_SIZE={world} but {key} is not set ({_LAUNCH})")
    _env_int("MASTER_PORT", low=1)
    local = _env_int("LOCAL_RANK")
    local = r if local is None else local
    backend = backend_for(device)
    dev = torch.device(device)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UserError(f"device {str(device)!r} but CUDA is not available on this machine")
        if not dist.is_nccl_available():
            raise UserError("device is cuda but this torch build has no NCCL backend")
        n_gpu = torch.cuda.device_count()
        local_world = _env_int("LOCAL_WORLD_SIZE", low=1) or 1
        if dev.index is not None:
            if local_world > 1:
                raise UserError(f"device = {str(device)!r} would put all {local_world} local ranks on one GPU; "
                                "use device = 'cuda' (rank r takes cuda:LOCAL_RANK)")
            index = dev.index
        else:
            index = local
        if index >= n_gpu:
            raise UserError(f"LOCAL_RANK {local} needs cuda:{index} but this machine has {n_gpu} GPU(s); "
                            f"use --nproc-per-node {n_gpu} or fewer")
        torch.cuda.set_device(index)
    kwargs = {}
    if timeout_s is not None:
        kwargs["timeout"] = datetime.timedelta(seconds=float(timeout_s))
    try:
        dist.init_process_group(backend, **kwargs)
    except (RuntimeError, ValueError) as exc:  # DistBackendError / DistNetworkError are RuntimeErrors
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot join the process group ({backend}, rank {r} of {world}, "
                        f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}): {why}") from None
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Leave the process group (no-op without one; safe to call twice)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- sharding a minibatch -----------------------------------------------------------------
def shard_sizes(batch_size: int, world: int | None = None) -> list[int]:
    """Samples of each rank's contiguous shard of a minibatch of ``batch_size``: sizes
    differ by at most one, the first ranks take the extra samples (a batch smaller than
    the world leaves the last ranks empty)."""
    w = world_size() if world is None else int(world)
    base, extra = divmod(int(batch_size), w)
    return [base + (1 if r < extra else 0) for r in range(w)]


def shard(batch_size: int, r: int | None = None, world: int | None = None) -> slice:
    """This rank's contiguous slice of a minibatch of ``batch_size`` samples."""
    sizes = shard_sizes(batch_size, world)
    r = rank() if r is None else int(r)
    start = sum(sizes[:r])
    return slice(start, start + sizes[r])


# -- collectives ----------------------------------------------------------------------------
def _comm(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the backend can send it: contiguous, bool as uint8, on the GPU for nccl."""
    c = t
    if c.dtype == torch.bool:
        c = c.to(torch.uint8)
    if dist.get_backend() == "nccl" and c.device.type != "cuda":
        c = c.to(torch.device("cuda", torch.cuda.current_device()))
    return c if c.is_contiguous() else c.contiguous()


def _back(t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Write the received ``c`` into ``t`` when ``_comm`` made a copy; return ``t``."""
    if c is not t:
        t.copy_(c.to(device=t.device, dtype=t.dtype))
    return t


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (``"sum"``), average (``"mean"``) or maximum (``"max"``) of ``t`` over the
    ranks, in place; returns ``t`` (unchanged in a single process)."""
    if op not in ("sum", "mean", "max"):
        raise ValueError(f"op must be 'sum', 'mean' or 'max', got {op!r}")
    if not is_distributed():
        return t
    c = _comm(t)
    dist.all_reduce(c, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    _back(t, c)
    if op == "mean":
        t.div_(world_size())
    return t


def weighted_sum(t: torch.Tensor, weight: float) -> torch.Tensor:
    r""":math:`\sum_r w_r t_r` over the ranks (a new tensor; ``t`` itself in a single
    process). With :math:`w_r` = shard size / batch size and ``t`` a mean over the shard,
    this is the mean over the global batch."""
    if not is_distributed():
        return t
    out = t * weight
    return all_reduce(out)


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``t`` (same shape and dtype on every rank) with rank ``src``'s, in place."""
    if not is_distributed():
        return t
    c = _comm(t)
    dist.broadcast(c, src=src)
    return _back(t, c)


def broadcast_tensor(t: torch.Tensor | None, src: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """Rank ``src``'s tensor on every rank, when the others do not know its shape or dtype
    (they pass ``None``); placed on ``device`` (default: ``src``'s device type, this rank's)."""
    if not is_distributed():
        if t is None:
            raise ValueError("broadcast_tensor needs a tensor on the source rank")
        return t
    meta = [None]
    if rank() == src:
        if t is None:
            raise ValueError("broadcast_tensor needs a tensor on the source rank")
        meta = [(tuple(t.shape), str(t.dtype).removeprefix("torch."), t.device.type)]
    dist.broadcast_object_list(meta, src=src)
    shape, dtype_name, dev_type = meta[0]
    if rank() == src:
        out = t
    else:
        dev = torch.device(device) if device is not None else (
            torch.device("cuda", torch.cuda.current_device()) if dev_type == "cuda" else torch.device("cpu"))
        out = torch.empty(shape, dtype=getattr(torch, dtype_name), device=dev)
    return broadcast(out, src)


def all_gather(t: torch.Tensor, dim: int = 0, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """The ranks' tensors concatenated along ``dim`` in rank order. ``sizes``: each rank's
    length along ``dim`` when known (they may differ; a rank may hold more rows than its
    size, the rest is ignored); otherwise they are gathered first. Other dims must agree."""
    if not is_distributed():
        return t if sizes is None else t.narrow(dim, 0, int(sizes[0]))
    W = world_size()
    dim = dim % t.dim()
    if sizes is None:
        n = torch.tensor([t.shape[dim]], dtype=torch.int64)
        got = [torch.zeros_like(n) for _ in range(W)]
        if dist.get_backend() == "nccl":
            n = n.cuda()
            got = [g.cuda() for g in got]
        dist.all_gather(got, n)
        sizes = [int(g) for g in got]
    sizes = [int(s) for s in sizes]
    if len(sizes) != W:
        raise ValueError(f"need {W} sizes, got {len(sizes)}")
    if t.shape[dim] < sizes[rank()]:
        raise ValueError(f"rank {rank()} holds {t.shape[dim]} rows along dim {dim}, "
                         f"fewer than its size {sizes[rank()]}")
    top = max(max(sizes), 1)
    own = t.narrow(dim, 0, min(t.shape[dim], top))
    if own.shape[dim] < top:
        pad_shape = list(own.shape)
        pad_shape[dim] = top - own.shape[dim]
        own = torch.cat([own, own.new_zeros(pad_shape)], dim)
    c = _comm(own)
    bufs = [torch.empty_like(c) for _ in range(W)]
    dist.all_gather(bufs, c)
    parts = [b.narrow(dim, 0, s) for b, s in zip(bufs, sizes)]
    out = torch.cat(parts, dim)
    return out.to(device=t.device, dtype=t.dtype)


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank."""
    if not is_distributed():
        return bool(flag)
    return bool(all_reduce(torch.tensor([1.0 if flag else 0.0]), "max").item())


# -- training -------------------------------------------------------------------------------
def reduce_gradients(params: Iterable[torch.nn.Parameter], weight: float,
                     extra: dict[str, torch.Tensor] | None = None,
                     loss: torch.Tensor | float | None = None) -> float | None:
    r"""Combine the ranks' gradients into the gradient of the global batch-mean loss, in
    one all-reduce: ``p.grad <- sum_r w_r p.grad_r`` for every parameter that requires a
    gradient and has one on some rank (a rank without it counts zero; a parameter with no
    gradient anywhere keeps ``None``), the same for the tensors of ``extra`` (in place;
    e.g. e-prop's dense weight gradients) and for ``loss``. ``weight`` :math:`w_r` is this
    rank's shard size over the global batch size (so the weights sum to 1 and terms
    every rank computes identically, such as EWC's penalty, are kept as they are).
    Returns the combined loss (or ``loss`` unchanged in a single process)."""
    params = [p for p in params if p.requires_grad]
    loss_v = None if loss is None else float(loss)
    if not is_distributed():
        return loss_v
    extra = extra or {}
    keys = sorted(extra)
    ref = next((p.grad if p.grad is not None else p for p in params), None)
    if ref is None and keys:
        ref = extra[keys[0]]
    dev = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None else torch.float32
    head = [0.0 if p.grad is None else 1.0 for p in params] + [0.0 if loss_v is None else loss_v * weight]
    pieces = [torch.tensor(head, dtype=dtype, device=dev)]
    for p in params:
        pieces.append(torch.zeros(p.numel(), dtype=dtype, device=dev) if p.grad is None
                      else p.grad.detach().reshape(-1).to(dtype) * weight)
    for k in keys:
        pieces.append(extra[k].detach().reshape(-1).to(device=dev, dtype=dtype) * weight)
    buf = all_reduce(torch.cat(pieces))
    flags, off = buf[:len(params)], len(params)
    loss_out = float(buf[off]) if loss_v is not None else None
    off += 1
    for i, p in enumerate(params):
        n = p.numel()
        if flags[i] > 0:
            g = buf[off:off + n].view(p.shape).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        off += n
    for k in keys:
        t = extra[k]
        t.copy_(buf[off:off + t.numel()].view(t.shape))
        off += t.numel()
    return loss_out


@torch.no_grad()
def sync_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (what DDP does at start)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        broadcast(t.data, src)
