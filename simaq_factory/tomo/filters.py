"""FBP filters along the detector axis (reference-simaq §3.8, with the Hamming bug fixed).

All filters start from the Ram-Lak (ramp) response built in the spatial domain as scikit-image does
(``f[0] = 1/4``, ``f[m] = −1/(π m)²`` for odd ``m``, 0 for even ``m ≠ 0``; ``H = 2·Re FFT(f)``), which
gets the DC term right (no zero-frequency hole). Windows are applied on the fftshift-aware
frequency axis: 1 at DC, tapering towards Nyquist.

* ``ram-lak``: the ramp alone.
* ``shepp-logan``: ramp · sinc (``sin(ω)/ω``, ``ω = π·f``, f in cycles/sample).
* ``cosine``: ramp · ``fftshift(sin(linspace(0, π, P)))`` (scikit-image's cosine window).
* ``hamming`` / ``hann``: ramp · ``fftshift(np.hamming(P))`` / ``fftshift(np.hanning(P))``.
* ``hamming_legacy_unshifted``: **reproduces a reference bug, for reproduction studies only.** The
  reference multiplied the ramp by torch's periodic Hamming window ``0.54 − 0.46·cos(2πk/P)`` in FFT
  bin order without fftshift: 0.08 at DC, 1.0 at Nyquist, i.e. an *inverted* apodisation that boosts
  high frequencies relative to Ram-Lak. The trained SimAQ model saw this variant.

The shifted scikit-image windows are not exactly even on the DFT circle (``H[k] ≠ H[P − k]`` by one
bin); like scikit-image we take the real part of the inverse FFT, which is exactly filtering with the
even part ``(H[k] + H[P − k])/2``. We store that even part, so a real ``rfft``/``irfft`` pair gives the
same result as scikit-image's complex FFT.

Padding: the detector axis is zero-padded to ``P = max(64, 2^ceil(log2(2·D)))`` (reference §3.8).
scikit-image's ``iradon(circle=True)`` first pads the sinogram to the square's diagonal, so it uses
``P = max(64, 2^ceil(log2(2·ceil(√2·D))))``; :func:`skimage_padded_size` gives that for oracle tests.
The ramp part does not depend on ``P`` (for ``P ≥ 2D``) but the windows do slightly.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch

from simaq_factory.device import one_torch_thread

__all__ = [
    "FILTER_NAMES",
    "FilterName",
    "filter_projections",
    "fourier_filter",
    "padded_size",
    "skimage_padded_size",
]

FilterName = Literal["ram-lak", "shepp-logan", "cosine", "hamming", "hann", "hamming_legacy_unshifted"]
FILTER_NAMES: tuple[str, ...] = (
    "ram-lak",
    "shepp-logan",
    "cosine",
    "hamming",
    "hann",
    "hamming_legacy_unshifted",
)
_ALIASES = {"ramp": "ram-lak", "ramlak": "ram-lak", "ram_lak": "ram-lak", "shepp_logan": "shepp-logan"}


def _canonical(name: str) -> str:
    key = _ALIASES.get(name, name)
    if key not in FILTER_NAMES:
        raise ValueError(f"unknown FBP filter {name!r}; expected one of {FILTER_NAMES}")
    return key


def padded_size(det_count: int) -> int:
    """FFT length for ``det_count`` columns: ``max(64, next power of two >= 2·det_count)``."""
    if det_count < 1:
        raise ValueError(f"det_count must be >= 1, got {det_count}")
    return max(64, 1 << int(math.ceil(math.log2(2 * det_count))))


def skimage_padded_size(det_count: int) -> int:
    """The FFT length scikit-image's ``iradon(..., circle=True)`` uses for a ``det_count`` sinogram."""
    return padded_size(int(math.ceil(math.sqrt(2) * det_count)))


@functools.lru_cache(maxsize=64)
def _half_spectrum(name: str, size: int) -> np.ndarray:
    m = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1.0 / (np.pi * m) ** 2
    ramp = 2.0 * np.real(np.fft.fft(f))
    k = np.arange(size)
    if name == "ram-lak":
        window = np.ones(size)
    elif name == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(size)
        window = np.ones(size)
        window[1:] = np.sin(omega[1:]) / omega[1:]
    elif name == "cosine":
        window = np.fft.fftshift(np.sin(np.linspace(0.0, np.pi, size, endpoint=False)))
    elif name == "hamming":
        window = np.fft.fftshift(np.hamming(size))
    elif name == "hann":
        window = np.fft.fftshift(np.hanning(size))
    elif name == "hamming_legacy_unshifted":
        window = 0.54 - 0.46 * np.cos(2.0 * np.pi * k / size)
    else:  # pragma: no cover - guarded by _canonical
        raise ValueError(name)
    full = ramp * window
    even = 0.5 * (full + full[(-k) % size])
    out = even[: size // 2 + 1].copy()
    out.setflags(write=False)
    return out


def fourier_filter(name: str, size: int) -> np.ndarray:
    """Real frequency response for rfft bins 0 … size/2, float64 shape (size // 2 + 1,).

    ``size`` must be an even FFT length (>= 4). Bin 0 is DC, the last bin Nyquist.
    """
    if size < 4 or size % 2:
        raise ValueError(f"filter size must be an even integer >= 4, got {size}")
    return _half_spectrum(_canonical(name), int(size))


def filter_projections(
    proj: torch.Tensor,
    name: str = "ram-lak",
    *,
    pad_to: int | None = None,
    extend: int = 0,
) -> torch.Tensor:
    """Filter projections along the detector (last) axis.

    Args:
        proj: (..., D) float tensor (typically (A, Z, D)), any device.
        name: a filter from :data:`FILTER_NAMES` (``"ramp"`` is accepted for ``"ram-lak"``).
        pad_to: FFT length; default :func:`padded_size` (D); must be even and >= 2·D.
        extend: also return the filtered signal at ``extend`` virtual columns beyond each edge
            (the linear convolution of the zero-extended data is defined there); FBP uses 1 so that
            rim pixels interpolate between the last real column and its neighbour, as scikit-image does.

    Returns:
        (..., D + 2·extend) tensor, same dtype/device; column ``e`` of the output is detector ``e − extend``.
    """
    if proj.ndim < 1:
        raise ValueError("proj must have a detector axis")
    if not proj.is_floating_point():
        raise ValueError(f"proj must be a floating tensor, got {proj.dtype}")
    d = proj.shape[-1]
    size = padded_size(d) if pad_to is None else int(pad_to)
    if extend < 0 or size < 2 * d or size < d + 2 * extend + 1:
        raise ValueError(f"pad_to={size} too small for {d} columns (need >= 2·D) or bad extend={extend}")
    h = torch.tensor(fourier_filter(name, size), dtype=proj.dtype, device=proj.device)
    # one thread: the CPU FFT library's result depends on its thread count (by up to 7e-7 relative
    # at some lengths, e.g. 64), which made the reconstruction's bytes depend on the number of
    # workers a build used; at the sizes FBP uses a second thread did not speed it up
    with one_torch_thread(proj.device):
        spec = torch.fft.rfft(proj, n=size, dim=-1)
        spec.mul_(h)
        full = torch.fft.irfft(spec, n=size, dim=-1)
    if extend == 0:
        return full[..., :d].contiguous()
    return torch.cat([full[..., size - extend :], full[..., : d + extend]], dim=-1)
