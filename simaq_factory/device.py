"""Device selection: ``cpu``, ``cuda`` (or ``cuda:N``) and ``auto``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def resolve_device(name: str, key: str = "execution.device") -> torch.device:
    """Map a user-facing device name to a ``torch.device``; ``auto`` picks CUDA when available.

    The one check of a device name for every command of both packages: anything but ``auto``,
    ``cpu``, ``cuda`` or ``cuda:N``, CUDA where there is none, or an index beyond the visible GPUs
    raises :class:`~simaq_factory.errors.BadInput` naming ``key`` (the recipe field, config key
    or flag the name came from; exit code 2 at the CLI), before anything is written.
    """
    from simaq_factory.errors import BadInput
    from simaq_factory.recipe.model import DEVICE_NAME, DEVICE_NAMES

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not isinstance(name, str) or not DEVICE_NAME.fullmatch(name):
        raise BadInput(key, f"unknown device {name!r} (expected {DEVICE_NAMES})")
    if not torch.cuda.is_available():
        raise BadInput(key, f"{name!r} requested but CUDA is not available here")
    dev = torch.device(name)
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        seen = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise BadInput(key, f"{name!r} requested but CUDA sees {count} device(s) here ({seen})")
    return dev


def torch_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (derive ``seed`` from the sample rng)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    return gen


def true_div(t: torch.Tensor, divisor: float) -> torch.Tensor:
    """``t / divisor``, correctly rounded on every device.

    CUDA divides a tensor by a Python (CPU) scalar as ``t * (1 / divisor)``, which differs from the
    CPU's true division in the last bit for about a third of float32 values; dividing by a 0-dim
    tensor on ``t``'s device is a true division on both. The phantom path uses this wherever its
    result feeds an inside test, so phantom and labels are the same bytes on CPU and CUDA.
    """
    return t / torch.tensor(divisor, dtype=t.dtype, device=t.device)


def lerp_select(
    x: torch.Tensor, dim: int, i0: torch.Tensor, i1: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor,
    *, out: torch.Tensor | None = None, tmp: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w0 · x[i0] + w1 · x[i1]`` along ``dim`` (weights broadcast along it): linear interpolation
    between gathered rows, each product and the sum rounded separately. No fused multiply-add can
    enter, so the bytes are the same on every device and CPU vector width (``torch.lerp``,
    ``addcmul``, ``add(alpha=)`` and the library interpolation kernels round differently with and
    without FMA). ``out`` / ``tmp`` receive the two gathers when given (the result is ``out``).
    """
    a = torch.index_select(x, dim, i0, out=out)
    a *= w0
    b = torch.index_select(x, dim, i1, out=tmp)
    b *= w1
    a += b
    return a


@contextmanager
def one_torch_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU ops on one intra-op thread inside the block, restoring the count after; a
    no-op for a CUDA ``device``. Used where one thread is faster (long chains of small ops) or where
    a CPU library's result depends on its thread count."""
    before = torch.get_num_threads()
    if device.type != "cpu" or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
