"""tomo/filters.py: filter_projections against a direct circular convolution with the filter's
kernel, including the virtual columns beyond the detector edges, aliases and padding checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simaq_factory.tomo.filters import filter_projections, fourier_filter, padded_size


def _direct(x: np.ndarray, name: str, size: int, cols: np.ndarray) -> np.ndarray:
    """Σ_i x[..., i] · h[(j − i) mod size] at detector columns ``cols`` (negative: before column 0)."""
    h = np.fft.irfft(fourier_filter(name, size), n=size)  # the filter's periodic spatial kernel
    i = np.arange(x.shape[-1])
    return np.stack([(x * h[(j - i) % size]).sum(-1) for j in cols], axis=-1)


@pytest.mark.parametrize("name", ["ram-lak", "hamming"])
@pytest.mark.parametrize("extend", [0, 1, 3])
def test_filtered_columns_and_edge_extension_are_the_linear_convolution(name: str, extend: int) -> None:
    rng = np.random.default_rng(0)
    d = 21
    x = rng.standard_normal((2, 3, d))
    out = filter_projections(torch.tensor(x), name, extend=extend).numpy()
    assert out.shape == (2, 3, d + 2 * extend)
    cols = np.arange(-extend, d + extend)  # output column e is detector e − extend
    np.testing.assert_allclose(out, _direct(x, name, padded_size(d), cols), rtol=1e-10, atol=1e-12)


def test_ramp_is_an_alias_of_ram_lak() -> None:
    x = torch.rand(4, 2, 17, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for alias in ("ramp", "ramlak", "ram_lak"):
        assert torch.equal(filter_projections(x, alias), filter_projections(x, "ram-lak"))
    assert not torch.allclose(filter_projections(x, "ramp"), filter_projections(x, "hamming"))


def test_padding_shorter_than_twice_the_detector_is_refused() -> None:
    x = torch.zeros(1, 1, 40)
    with pytest.raises(ValueError, match="too small"):
        filter_projections(x, pad_to=64)  # < 80: the circular convolution would wrap around
    assert filter_projections(x, pad_to=80).shape == (1, 1, 40)
