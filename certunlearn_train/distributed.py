"""Data-parallel unlearning with ``torch.distributed``: the only module that talks to it.

Inside an initialised process group, :func:`certunlearn_train.unlearn`, the baselines and
:func:`certunlearn_train.train.train` run unchanged on every rank (same model, same retain set)
and produce the same certified result as one process:

* **one set of random choices.** The batch order and the noise key come from one secret drawn on
  rank 0 and broadcast (:func:`from_rank0`, :func:`noise_stream`); it is never written anywhere.
  With a caller-chosen seed every rank uses that seed. Every rank therefore draws the same global
  batches and the same noise (the counter-based stream of :class:`~certunlearn_train.ops.NoiseStream`
  gives the same values for the same (seed, offset) on every rank).
* **each rank computes its slice of every global batch** (:func:`local_range`): the clipped
  per-sample gradient sums (per-sample clipping: each rank clips its own samples) or the plain
  gradient sums (batch clipping) are all-reduced, divided by the global batch size, and handed to
  the fused op as one row (:class:`DistributedGradients`). For batch clipping the op then clips
  that global mean gradient as a whole; for per-sample clipping its clip is a no-op (a mean of
  vectors of norm <= C1 has norm <= C1).
* **replicas stay identical without broadcasting parameters.** Every rank applies the same step to
  the same parameters with the same all-reduced gradient and the same noise; the C0 clip and the
  model-clipping projection see the full, replicated parameter vector, so every norm is global.
  :func:`check_replicas` compares an exact integer checksum of the parameters across ranks (one
  all-reduce of 6 integers) every :func:`check_every` steps and at the end of every run, and
  raises :class:`ReplicaDivergenceError` if two ranks ever differ.
* **failures stop every rank.** Every collective goes through :func:`_collective`, which turns a
  peer that died, raised or timed out (the process group's timeout) into one
  :class:`DistributedError` naming the operation; no certificate is built on a rank that raised.

Only rank 0 should write files (:func:`is_writer`); the certificate records ``world_size``.

Sharded parameters (FSDP2 ``fully_shard``, DTensor) are not supported; see docs/training.md,
section "Distributed", for why.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import threading
from typing import Callable, Optional, Tuple

import torch

__all__ = [
    "DistributedError", "ReplicaDivergenceError", "DistributedGradients", "active", "local_only",
    "rank", "world_size", "is_writer", "local_range", "from_rank0", "noise_stream",
    "gradient_source", "check_replicas", "check_same_data", "checksum", "broadcast_parameters",
    "backward_global_mean", "backward_share", "sum_int", "check_same_int", "check_sharded",
    "set_check_every", "check_every", "init_from_env", "device",
    "shutdown", "timeout_from", "DEFAULT_TIMEOUT_S", "TIMEOUT_ENV", "CHECK_EVERY_ENV",
]

#: Seconds a collective may wait for the other ranks before every rank gives up.
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "CERTUNLEARN_DIST_TIMEOUT"
CHECK_EVERY_ENV = "CERTUNLEARN_DIST_CHECK_EVERY"
_DEFAULT_CHECK_EVERY = 50
_check_every: Optional[int] = None


class DistributedError(ConnectionError):
    """A data-parallel run cannot go on: a rank stopped, raised or timed out, or replicas diverged.

    A ``ConnectionError`` (an ``OSError``), so the command line reports it as one line and exit
    status 1.
    """


class ReplicaDivergenceError(DistributedError):
    """The ranks' copies of the model are no longer identical (the run's result is void)."""


# ---------------------------------------------------------------------------------------------
# Process group queries
# ---------------------------------------------------------------------------------------------

_local_only = threading.local()


def active() -> bool:
    """Whether runs here are data parallel: a process group of more than one rank is initialised
    (and :func:`local_only` is not in effect)."""
    import torch.distributed as dist
    if getattr(_local_only, "depth", 0):
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def local_only():
    """Within this block (in this thread), runs ignore the process group: this rank runs alone.

    For a script that already holds a process group (a DDP training job, say) and unlearns on one
    rank only; without it, that rank would wait for the others at its first collective until the
    timeout. The certificate then records ``world_size`` 1.
    """
    _local_only.depth = getattr(_local_only, "depth", 0) + 1
    try:
        yield
    finally:
        _local_only.depth -= 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks taking part in a run (1 outside a process group or under :func:`local_only`)."""
    import torch.distributed as dist
    if not active():
        return 1
    return dist.get_world_size()


def is_writer() -> bool:
    """True on the one process that writes files (rank 0, or the only process)."""
    return rank() == 0


def local_range(batch: int, rank_: Optional[int] = None,
                world: Optional[int] = None) -> Tuple[int, int]:
    """``(lo, hi)``: the contiguous slice of a global batch of ``batch`` samples this rank computes.

    The slices of ranks 0..W-1 partition ``range(batch)`` in order; their sizes differ by at most
    one (a rank may get none when ``batch < W``).
    """
    r = rank() if rank_ is None else int(rank_)
    w = world_size() if world is None else int(world)
    return r * batch // w, (r + 1) * batch // w


def set_check_every(steps: Optional[int]) -> None:
    """Compare the replicas every ``steps`` noisy steps (None: back to the default / environment)."""
    global _check_every
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"check_every must be an integer >= 1 or None, got {steps!r}")
    _check_every = steps


def check_every() -> int:
    """Steps between two replica checks.

    :func:`set_check_every`'s value, else ``$CERTUNLEARN_DIST_CHECK_EVERY``, else 50.
    """
    if _check_every is not None:
        return _check_every
    raw = os.environ.get(CHECK_EVERY_ENV)
    if raw is None or raw == "":
        return _DEFAULT_CHECK_EVERY
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{CHECK_EVERY_ENV} must be an integer >= 1, got {raw!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Collectives (every call to torch.distributed goes through _collective)
# ---------------------------------------------------------------------------------------------

def _comm_device(t: torch.Tensor) -> torch.device:
    """A device the backend can reduce ``t`` on (NCCL alone takes only CUDA tensors)."""
    import torch.distributed as dist
    backend = str(dist.get_backend()).lower()
    if t.device.type == "cpu" and "gloo" not in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def _collective(what: str, fn: Callable, t: torch.Tensor) -> torch.Tensor:
    """Run ``fn(tensor)`` (in place) on a device the backend takes; failures -> DistributedError."""
    dev = _comm_device(t)
    buf = t if dev == t.device else t.to(dev)
    try:
        fn(buf)
    except Exception as exc:  # a dead peer, a timeout, a closed connection, an aborted group
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise DistributedError(
            f"rank {rank()} of {world_size()}: {what} failed ({type(exc).__name__}: {first}); "
            "another rank stopped, raised or did not answer within the process group's timeout, "
            "so this run is abandoned and no certificate is issued") from None
    if buf is not t:
        t.copy_(buf)
    return t


def _all_reduce(t: torch.Tensor, op, what: str) -> torch.Tensor:
    import torch.distributed as dist
    return _collective(what, lambda b: dist.all_reduce(b, op=op), t)


def _broadcast(t: torch.Tensor, what: str) -> torch.Tensor:
    import torch.distributed as dist
    return _collective(what, lambda b: dist.broadcast(b, src=0), t)


_U64 = 1 << 64


def from_rank0(value: int) -> int:
    """Rank 0's ``value`` on every rank (an integer in [-2^63, 2^64)); ``value`` itself outside a group.

    Used for the secret seeds: each rank draws one, and rank 0's is the one every rank uses. It
    travels only through the process group, never to a file or a log.
    """
    value = int(value)
    if not active():
        return value
    if not -(1 << 63) <= value < _U64:
        raise ValueError(f"from_rank0: value must lie in [-2^63, 2^64), got {value}")
    unsigned = value % _U64
    signed = unsigned - _U64 if unsigned >= (1 << 63) else unsigned
    # one int64 for the value and one flag for "it was negative", so both ranges round-trip
    t = torch.tensor([signed, 1 if value < 0 else 0], dtype=torch.int64)
    _broadcast(t, "broadcasting the random seed from rank 0")
    got = int(t[0]) % _U64
    return got - _U64 if int(t[1]) else got


def noise_stream(seed: Optional[int] = None):
    """A :class:`~certunlearn_train.ops.NoiseStream` with the same key on every rank.

    With ``seed`` given, every rank uses it (and the stream says the seed was user-supplied).
    Otherwise each rank draws a key from the OS entropy source and rank 0's is broadcast; the
    stream still reports an OS-entropy key.
    """
    from .ops import NoiseStream
    stream = NoiseStream(seed)
    if seed is None and active():
        stream._seed = from_rank0(stream.seed)  # rank 0's secret; never written anywhere
    return stream


# ---------------------------------------------------------------------------------------------
# Replica check
# ---------------------------------------------------------------------------------------------

_CHUNK = 1 << 20
_MOD = 65521  # largest prime below 2^16: position weights 1..65521


def checksum(tensors) -> torch.Tensor:
    """An exact (int64) fingerprint of the raw bytes of ``tensors``, the same on every device.

    The bytes are read as 16-bit words w_i (single bytes for odd-sized dtypes); the result is
    ``[number of words, sum w_i, sum w_i * (i mod 65521 + 1)]``, summed in integers, so it does
    not depend on thread counts or reduction order. Changing one word changes the second entry;
    moving words changes the third. Exact for up to 2^31 words (no int64 overflow).
    """
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    tensors = list(tensors)
    device = tensors[0].device if tensors else torch.device("cpu")
    acc = torch.zeros(3, dtype=torch.int64, device=device)
    pos0 = 0
    for t in tensors:
        t = t.detach().reshape(-1).contiguous()
        if t.numel() == 0:
            continue
        raw = t.view(torch.uint8)
        words = raw.view(torch.int16) if raw.numel() % 2 == 0 and t.element_size() % 2 == 0 \
            else raw
        mask = 0xFFFF if words.dtype == torch.int16 else 0xFF
        for i in range(0, words.numel(), _CHUNK):
            w = words[i:i + _CHUNK].to(device=device, dtype=torch.int64) & mask
            pos = torch.arange(pos0 + i, pos0 + i + w.numel(), dtype=torch.int64,
                               device=device) % _MOD + 1
            acc[1] += w.sum()
            acc[2] += (w * pos).sum()
        acc[0] += words.numel()
        pos0 += words.numel()
    return acc


def _state(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if hasattr(obj, "state_dict"):
        return [v for v in obj.state_dict().values() if isinstance(v, torch.Tensor)]
    return list(obj)


def check_replicas(obj, what: str = "the parameters") -> None:
    """Raise :class:`ReplicaDivergenceError` unless ``obj`` is bit-identical on every rank.

    ``obj``: a tensor, a list of tensors or a module (its ``state_dict``). One all-reduce (MAX) of
    the checksum and its negation gives every rank the same minimum and maximum, so either every
    rank raises or none does. A no-op outside a process group.
    """
    if not active():
        return
    c = checksum(_state(obj)).cpu()
    both = torch.cat([c, -c])
    _all_reduce(both, _reduce_op("MAX"), f"comparing {what} across ranks")
    hi, lo = both[:3], -both[3:]
    if not torch.equal(hi, lo):
        raise ReplicaDivergenceError(
            f"rank {rank()} of {world_size()}: {what} differ between ranks (checksums range from "
            f"{lo.tolist()} to {hi.tolist()}); every rank must start from the same model and "
            "retain set, and nothing may modify one rank's copy during the run; the result is "
            "void and no certificate is issued")


def _reduce_op(name: str):
    import torch.distributed as dist
    return getattr(dist.ReduceOp, name)


def broadcast_parameters(model) -> None:
    """Copy rank 0's parameters and buffers to every rank (used after a random re-initialisation)."""
    if not active():
        return
    with torch.no_grad():
        for t in model.state_dict().values():
            if isinstance(t, torch.Tensor) and t.numel():
                _broadcast(t, "broadcasting the initial weights from rank 0")


def check_same_data(x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse (on every rank) a run whose ranks were given different data sets."""
    if active():
        check_replicas([x, y], "the data sets given to the ranks")


def sum_int(value: int) -> int:
    """The sum of ``value`` over the ranks (``value`` itself outside a process group)."""
    if not active():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    _all_reduce(t, _reduce_op("SUM"), "summing the batch sizes of the ranks")
    return int(t[0])


def check_same_int(value: int, what: str) -> None:
    """Refuse (on every rank, with a ValueError) a ``value`` that differs between the ranks."""
    if not active():
        return
    t = torch.tensor([int(value), -int(value)], dtype=torch.int64)
    _all_reduce(t, _reduce_op("MAX"), f"comparing {what}")
    if int(t[0]) != -int(t[1]):
        raise ValueError(f"{what} differ (from {-int(t[1])} to {int(t[0])}): every rank must be "
                         "given the same data set")


def check_sharded(x: torch.Tensor, y: torch.Tensor, name: str) -> None:
    """Refuse (on every rank) a loader or iterable that gives every rank the same first batch:
    under a process group each rank must read its own part of every global batch."""
    if not active():
        return
    c = checksum([x, y]).cpu()
    both = torch.cat([c, -c])
    _all_reduce(both, _reduce_op("MAX"), f"comparing the first batches of {name}")
    if torch.equal(both[:3], -both[3:]):
        raise ValueError(
            f"{name} gives every rank the same batches: under a process group each rank must "
            "read its own part of every global batch; use a DistributedSampler for a map-style "
            "dataset, make an IterableDataset yield each rank its own shard (by "
            "torch.distributed.get_rank()), or pass a map-style Dataset itself")


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------

class DistributedGradients:
    """A data-parallel :class:`~certunlearn_train._flat.GradientSource`: same call, global result.

    Called with the *global* batch (the same on every rank), it hands this rank's slice
    (:func:`local_range`) to the local source and all-reduces

    * ``clip="per_sample"``: the sum over the slice of the per-sample gradients, each clipped to
      C1 here (rows from the local source are clipped and summed; a one-row clipped mean times
      the slice size);
    * ``clip="batch"``: the slice's gradient sum (the local mean loss gradient times the slice
      size),

    then returns the global mean, ``sum / B``, as one (1, d) row. Every ``check_every()`` calls
    (the first included) the parameters are compared across ranks first.
    """

    def __init__(self, source, flat, every: Optional[int] = None):
        self.source, self.flat = source, flat
        self.every = check_every() if every is None else int(every)
        self.calls = 0
        self.out = torch.empty(flat.numel, dtype=flat.flat.dtype, device=flat.flat.device)
        self.norms = None  # the one global row is clipped by the op itself (no row norms to hand)

    def probe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.source.probe(x, y)

    def __call__(self, x: Optional[torch.Tensor], y: Optional[torch.Tensor],
                 global_size: Optional[int] = None) -> torch.Tensor:
        """The global mean gradient. ``global_size`` None: ``(x, y)`` is the global batch and
        this rank takes its slice; else ``(x, y)`` is already this rank's part (None: no part)
        of a global batch of ``global_size`` samples."""
        if self.calls % self.every == 0:
            check_replicas(self.flat.flat, f"the parameters before noisy step {self.calls + 1}")
        self.calls += 1
        if global_size is None:
            assert x is not None and y is not None
            b = len(x)
            lo, hi = local_range(b)
            x, y = x[lo:hi], y[lo:hi]
        else:
            b = int(global_size)
        m = 0 if x is None else len(x)
        out = self.out
        if m:
            assert x is not None and y is not None
            g = self.source(x, y)
            if self.source.clip == "per_sample":
                norms = torch.linalg.vector_norm(g.double(), dim=1)
                scale = (self.source.C1 / norms.clamp_min(1e-300)).clamp(max=1.0)
                if g.shape[0] != m:  # one row: the clipped mean of the slice
                    scale = scale * m
                torch.mv(g.t(), scale.to(g.dtype), out=out)
            else:
                torch.mul(g.view(-1), m, out=out)
        else:
            out.zero_()
        _all_reduce(out, _reduce_op("SUM"), f"summing the gradients of noisy step {self.calls}")
        out.div_(b)
        return out.view(1, -1)


def gradient_source(source, flat):
    """``source`` wrapped in :class:`DistributedGradients` inside a process group; else ``source``."""
    return DistributedGradients(source, flat) if active() else source


def backward_global_mean(model, loss_fn, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                         params=None) -> torch.Tensor:
    """Leave in each of ``params``' ``.grad`` the gradient of the mean loss over the global batch ``idx``.

    ``loss_fn(outputs, targets)`` is a scalar mean over its batch. Each rank back-propagates its
    slice's mean loss times ``slice size / B`` (its share of the global mean), and the gradients
    and the losses are all-reduced (summed) in one flat buffer, so every rank holds the same
    average gradient. Returns the global mean loss (the same value on every rank, so a
    non-finite loss stops every rank alike). Gradients must be zero or None on entry (as after
    ``zero_grad``). ``params``: default every parameter with ``requires_grad``.
    """
    b = len(idx)
    lo, hi = local_range(b)
    mine = idx[lo:hi]
    return backward_share(model, loss_fn, x[mine] if hi > lo else None,
                          y[mine] if hi > lo else None, b, params)


def backward_share(model, loss_fn, x: Optional[torch.Tensor], y: Optional[torch.Tensor], b: int,
                   params=None) -> torch.Tensor:
    """:func:`backward_global_mean` for a rank that holds its part ``(x, y)`` (None: no part) of
    a global batch of ``b`` samples."""
    params = [p for p in model.parameters() if p.requires_grad] if params is None \
        else list(params)
    share = None
    if x is not None and y is not None and len(x):
        share = loss_fn(model(x), y) * (len(x) / b)
        share.backward()
    ref = params[0] if params else (x if x is not None else torch.zeros(()))
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
             for p in params]
    loss = torch.zeros(1, dtype=dtype, device=ref.device) if share is None \
        else share.detach().reshape(1).to(dtype=dtype, device=ref.device)
    flat = torch.cat(parts + [loss])
    _all_reduce(flat, _reduce_op("SUM"), "summing the fine-tuning gradients")
    o = 0
    for p in params:
        n = p.numel()
        if p.grad is None:
            p.grad = flat[o:o + n].view_as(p).to(p.dtype).clone()
        else:
            p.grad.copy_(flat[o:o + n].view_as(p))
        o += n
    return flat[-1]


# ---------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------

def timeout_from(value=None) -> float:
    """The collective timeout in seconds: ``value``, else ``$CERTUNLEARN_DIST_TIMEOUT``, else 300."""
    source = "dist-timeout"
    if value is None:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None or raw == "":
            return DEFAULT_TIMEOUT_S
        value, source = raw, TIMEOUT_ENV
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{source} must be a number of seconds > 0, got {value!r}")
    return seconds


def init_from_env(timeout=None) -> bool:
    """Initialise the process group from torchrun's environment when ``WORLD_SIZE`` > 1.

    Backend: gloo for CPU tensors, and NCCL for CUDA tensors when CUDA is available (one
    ``cpu:gloo,cuda:nccl`` group; each rank then uses ``cuda:LOCAL_RANK``). ``timeout`` (seconds,
    default :func:`timeout_from`) bounds how long any collective waits for a rank that stopped.

    Returns:
        True when this call initialised a group (the caller should destroy it), else False.
    """
    import torch.distributed as dist
    seconds = timeout_from(timeout)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 or dist.is_initialized():
        return False
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=seconds))
    except Exception as exc:  # rendezvous failure: bad address, a rank that never came, ...
        raise DistributedError(f"cannot initialise the process group ({type(exc).__name__}: "
                               f"{str(exc).strip()[:300]})") from None
    return True


def device():
    """The device this rank should compute on: ``cuda:LOCAL_RANK`` under an NCCL group, else None."""
    if active() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return None


def shutdown(initialised: bool) -> None:
    """Destroy the process group if :func:`init_from_env` created it."""
    import torch.distributed as dist
    if initialised and dist.is_initialized():
        dist.destroy_process_group()
