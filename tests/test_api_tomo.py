"""simaq_factory.tomo's Python API: half-precision FBP, ReconstructionConfig's checks, a missing
geometry, and the ASTRA adapters' argument checks (which run without ASTRA installed)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from simaq_factory.tomo import Geometry, ReconstructionConfig, fbp, forward_project, reconstruct
from simaq_factory.tomo import adapters
from simaq_factory.tomo.adapters import BackendUnavailable, astra_fbp, astra_forward

N = 32


@pytest.fixture(scope="module")
def scan() -> SimpleNamespace:
    geom = Geometry.arc_degrees(N, 120, 2.0)
    yy, xx = np.mgrid[:N, :N]
    img = 1.0 * ((yy - 12) ** 2 + (xx - 18) ** 2 < 5**2) + 0.5 * ((yy - 20) ** 2 + (xx - 11) ** 2 < 3**2)
    vol = torch.from_numpy(np.stack([img, img.T]).astype(np.float32))
    return SimpleNamespace(geom=geom, vol=vol, proj=forward_project(vol, geom))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fbp_of_half_precision_projections_runs_in_float32_and_returns_their_dtype(scan, dtype):
    """torch's CPU FFT has no half path ('Unsupported dtype Half'), while the docstring promised
    any floating dtype back."""
    ref = fbp(scan.proj, scan.geom)
    got = fbp(scan.proj.to(dtype), scan.geom)
    assert got.dtype == dtype and got.shape == ref.shape
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # the input's rounding, not the filter's
    assert float((got.float() - ref).norm() / ref.norm()) < tol
    via_config = reconstruct(scan.proj.to(dtype), scan.geom, ReconstructionConfig(filter="ram-lak"))
    assert via_config.dtype == dtype


@pytest.mark.parametrize("field,value", [("center", "middle"), ("center", float("nan")), ("center", True),
                                         ("weighting", "uniform")])
def test_reconstruction_config_names_a_bad_center_or_weighting_at_construction(field, value):
    """It constructed, and reconstruct() then named Geometry.center / Geometry.weighting."""
    with pytest.raises(ValueError, match=rf"^reconstruction\.{field} must be "):
        ReconstructionConfig(**{field: value})


def test_reconstruction_config_keeps_the_values_it_takes():
    for kw in ({"center": "skimage"}, {"center": "astra"}, {"weighting": "quadrature"}, {"weighting": "pi_over_2A"}):
        ReconstructionConfig(**kw)  # type: ignore[arg-type]


def test_reconstruct_refuses_a_config_that_is_not_a_reconstruction_config(scan):
    with pytest.raises(TypeError, match=r"cfg must be a ReconstructionConfig .* got dict"):
        reconstruct(scan.proj, scan.geom, {"method": "fbp"})  # type: ignore[arg-type]


def test_a_missing_geometry_is_named(scan):
    """forward_project(vol, None): AttributeError 'NoneType' object has no attribute 'n'."""
    with pytest.raises(ValueError, match=r"^geom must be a simaq_factory.tomo.Geometry, got NoneType$"):
        forward_project(scan.vol, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^geom must be a simaq_factory.tomo.Geometry, got dict$"):
        fbp(scan.proj, {"n": N})  # type: ignore[arg-type]


@pytest.fixture
def no_astra(monkeypatch):
    monkeypatch.setitem(sys.modules, "astra", None)  # makes `import astra` fail


def test_astra_forward_refuses_an_unknown_projector_before_importing_astra(scan, no_astra):
    """ASTRA raised 'Unknown Projector2D type' after its data objects were made, naming no choice."""
    with pytest.raises(ValueError, match=r"^projector must be one of linear, strip, line, got 'bogus'$"):
        astra_forward(scan.vol, scan.geom, projector="bogus")
    for ok in adapters.ASTRA_PROJECTORS:
        with pytest.raises(BackendUnavailable):  # past the check: ASTRA is what is missing
            astra_forward(scan.vol, scan.geom, projector=ok)


def test_astra_fbp_refuses_an_unknown_filter_before_importing_astra(scan, no_astra):
    with pytest.raises(ValueError, match=r"^ASTRA has no filter 'bogus'; choose one of ram-lak, .*ramp"):
        astra_fbp(scan.proj, scan.geom, filter="bogus")
    with pytest.raises(ValueError, match=r"no filter 'hamming_legacy_unshifted'"):
        astra_fbp(scan.proj, scan.geom, filter="hamming_legacy_unshifted")
    for ok in ("ramp", "ram_lak", "shepp_logan", *adapters.ASTRA_FILTERS):
        with pytest.raises(BackendUnavailable):
            astra_fbp(scan.proj, scan.geom, filter=ok)


class _FakeAstra:
    """Just enough of astra's API for astra_fbp to run: records the algorithm configurations."""

    def __init__(self) -> None:
        self.configs: list[dict] = []
        self._shapes: dict[int, tuple[int, ...]] = {}
        fake = self

        class _Data2D:
            @staticmethod
            def create(kind: str, geom: dict, value: float) -> int:
                ident = len(fake._shapes) + 1
                fake._shapes[ident] = geom["shape"]
                return ident

            @staticmethod
            def store(ident: int, data: np.ndarray) -> None:
                pass

            @staticmethod
            def get_shared(ident: int) -> np.ndarray:
                return np.zeros(fake._shapes[ident], np.float32)

            @staticmethod
            def delete(ids: list[int]) -> None:
                pass

        class _Algorithm:
            @staticmethod
            def create(cfg: dict) -> int:
                fake.configs.append(cfg)
                return 1

            run = delete = staticmethod(lambda *a: None)

        self.data2d, self.algorithm = _Data2D, _Algorithm
        self.projector = SimpleNamespace(delete=lambda *a: None)

    @staticmethod
    def create_vol_geom(n: int, m: int, *window: float) -> dict:
        return {"shape": (n, m)}

    @staticmethod
    def create_proj_geom(kind: str, spacing: float, det: int, angles: np.ndarray) -> dict:
        return {"shape": (len(angles), det)}

    @staticmethod
    def create_projector(kind: str, proj_geom: dict, vol_geom: dict) -> int:
        return 7

    @staticmethod
    def astra_dict(name: str) -> dict:
        return {"type": name}

    @staticmethod
    def use_cuda() -> bool:
        return False


def test_astra_fbp_gives_astra_the_canonical_name_of_an_alias(scan, monkeypatch):
    """'ramp' (fbp's alias of ram-lak) was refused by astra_fbp; ASTRA itself calls it 'ram-lak'."""
    fake = _FakeAstra()
    monkeypatch.setitem(sys.modules, "astra", fake)
    for name, astra_name in (("ramp", "ram-lak"), ("ram-lak", "ram-lak"), ("shepp_logan", "shepp-logan"),
                             ("hann", "hann")):
        out = astra_fbp(scan.proj, scan.geom, filter=name)
        assert out.shape == (2, N, N)
        assert fake.configs[-1]["option"] == {"FilterType": astra_name}, name


def test_astra_fbp_of_ramp_is_its_ram_lak():
    pytest.importorskip("astra")
    geom = Geometry.arc_degrees(N, 180)
    proj = forward_project(torch.rand(2, N, N), geom)
    np.testing.assert_array_equal(astra_fbp(proj, geom, filter="ramp").numpy(),
                                  astra_fbp(proj, geom, filter="ram-lak").numpy())
