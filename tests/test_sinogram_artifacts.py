"""Sinogram-space artifacts (reference §3.5–§3.7): ice, flicker, Poisson, shifts, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simaq_factory.acquisition.sinogram import (
    DetectorNoiseConfig,
    FlickerConfig,
    IceThicknessConfig,
    MisalignmentConfig,
    PoissonConfig,
    SinogramArtifactsConfig,
    apply_sinogram_artifacts,
    flicker_maps,
    sample_sinogram_artifacts,
    shift_projections,
)
from simaq_factory.artifacts.banks import bank_specs, generate_bank
from simaq_factory.artifacts.config import ArtifactsConfig
from simaq_factory.recipe.fields import Dist
from simaq_factory.recipe.schema import parse_section, section_to_json

OFF = dict(
    flicker=FlickerConfig(enabled=False),
    ice_thickness=IceThicknessConfig(enabled=False),
)


#: the default flicker bank (64 maps of 32²) of a recipe with seed 7
BANK = torch.from_numpy(generate_bank(bank_specs(ArtifactsConfig(), (32, 32, 32), 7)["perlin_lo_2d"]))


def _proj(a: int = 6, z: int = 16, d: int = 24, seed: int = 0) -> torch.Tensor:
    return 5.0 + 10.0 * torch.rand((a, z, d), generator=torch.Generator().manual_seed(seed))


def test_defaults_follow_the_reference() -> None:
    cfg = SinogramArtifactsConfig()
    assert cfg.flicker.strength == Dist.normal(0.05, 0.03, 0.0, 1.0)
    assert cfg.ice_thickness.thickness == Dist.normal(10000.0, 2000.0, 5000.0, 20000.0)
    assert cfg.ice_thickness.lac == Dist.normal(0.01, 1e-5)
    assert not (cfg.detector_noise.enabled or cfg.poisson.enabled or cfg.misalignment.enabled)
    assert parse_section(SinogramArtifactsConfig, section_to_json(cfg)) == cfg
    p = sample_sinogram_artifacts(cfg, 10, np.random.default_rng(0))
    assert p["flicker"]["applied"] and p["ice_thickness"]["applied"]
    assert not (p["misalignment"]["applied"] or p["poisson"]["applied"] or p["detector_noise"]["applied"])


def test_ice_term_mean_is_h_lac_over_cos_per_projection() -> None:
    cfg = SinogramArtifactsConfig(flicker=FlickerConfig(enabled=False))
    angles = np.array([-60.0, -30.0, 0.0, 12.5, 45.0, 70.0])
    params = sample_sinogram_artifacts(cfg, len(angles), np.random.default_rng(3))
    h = params["ice_thickness"]["thickness"]
    assert 5000.0 <= h <= 20000.0
    proj = torch.zeros((6, 32, 32))
    out = apply_sinogram_artifacts(proj, angles, params).double()
    path = h / np.cos(np.deg2rad(angles))
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), 0.01 * path, rtol=1e-4)
    np.testing.assert_allclose(out.std(dim=(1, 2)).numpy(), 1e-5 * path, rtol=0.15)


def test_ice_path_is_bounded_near_ninety_degrees() -> None:
    cfg = SinogramArtifactsConfig(flicker=FlickerConfig(enabled=False))
    params = sample_sinogram_artifacts(cfg, 2, np.random.default_rng(3))
    out = apply_sinogram_artifacts(torch.zeros((2, 4, 4)), [-90.0, 90.0], params)
    h = params["ice_thickness"]["thickness"]
    assert torch.isfinite(out).all() and float(out.max()) < 0.0101 * h / 0.05


def test_flicker_bias_is_non_negative_and_bounded_by_f_mean() -> None:
    cfg = SinogramArtifactsConfig(
        flicker=FlickerConfig(strength=Dist.const(0.3)), ice_thickness=IceThicknessConfig(enabled=False)
    )
    proj = _proj(8, 20, 30)
    params = sample_sinogram_artifacts(cfg, 8, np.random.default_rng(1))
    with pytest.raises(ValueError, match="perlin_lo_2d"):
        apply_sinogram_artifacts(proj, np.zeros(8), params)
    out = apply_sinogram_artifacts(proj, np.zeros(8), params, BANK)
    bias = (out - proj).double()
    bound = 0.3 * proj.double().mean(dim=(1, 2))
    assert float(bias.min()) >= -1e-6
    max_per_proj = bias.amax(dim=(1, 2))
    assert torch.all(max_per_proj <= bound * (1 + 1e-5))
    assert torch.all(max_per_proj >= bound * 0.999)  # min–max normalised maps reach 1
    # every projection gets its own map
    maps = bias / bound[:, None, None]
    assert not torch.allclose(maps[0], maps[1], atol=1e-3)


def test_flicker_maps_are_bank_entries_in_the_eight_orientations() -> None:
    e = 6
    bank = torch.arange(2 * e * e, dtype=torch.float32).reshape(2, e, e)
    m = bank[1]
    expected = [m, m.flip(0), m.flip(1), m.flip(0).flip(1), m.T, m.T.flip(0), m.T.flip(1), m.T.flip(0).flip(1)]
    maps = flicker_maps(bank, [1] * 8, list(range(8)), (e, e))  # same size: resampling is the identity
    for o in range(8):
        want = (expected[o] - expected[o].min()) / (expected[o].max() - expected[o].min())
        assert torch.allclose(maps[o], want, atol=1e-6), o
    assert len({maps[o].numpy().tobytes() for o in range(8)}) == 8
    with pytest.raises(ValueError, match="out of range"):
        flicker_maps(bank, [2], [0], (e, e))
    with pytest.raises(ValueError, match="0..7"):
        flicker_maps(bank, [0], [8], (e, e))


def test_flicker_draws_entries_and_orientations_uniformly() -> None:
    params = sample_sinogram_artifacts(SinogramArtifactsConfig(), 4000, np.random.default_rng(5),
                                       flicker_entries=10)
    entries = np.bincount(params["flicker"]["entries"], minlength=10)
    orient = np.bincount(params["flicker"]["orientations"], minlength=8)
    assert entries.shape == (10,) and orient.shape == (8,)
    assert entries.min() > 0.8 * 400 and entries.max() < 1.2 * 400
    assert orient.min() > 0.8 * 500 and orient.max() < 1.2 * 500


def test_flicker_adds_power_only_at_low_spatial_frequency() -> None:
    """The bias's 2D spectrum lies within a few periods of zero frequency (bank res = 2 periods)."""
    a, n = 16, 128
    cfg = SinogramArtifactsConfig(flicker=FlickerConfig(strength=Dist.const(0.2)),
                                  ice_thickness=IceThicknessConfig(enabled=False))
    proj = torch.full((a, n, n), 10.0)
    params = sample_sinogram_artifacts(cfg, a, np.random.default_rng(2))
    bias = (apply_sinogram_artifacts(proj, np.zeros(a), params, BANK) - proj).double()
    bias -= bias.mean(dim=(1, 2), keepdim=True)
    w = torch.hann_window(n, periodic=False, dtype=torch.float64)  # the maps are not periodic
    power = torch.fft.fft2(bias * w[:, None] * w[None, :]).abs().square().sum(dim=0)
    f = torch.fft.fftfreq(n, d=1.0 / n).abs()  # cycles per projection
    radius = torch.maximum(f[:, None], f[None, :])
    low = float(power[radius <= 8].sum())
    assert low / float(power.sum()) > 0.995  # white noise: (17/128)² ≈ 0.018


def test_poisson_huge_dose_is_nearly_identity() -> None:
    cfg = SinogramArtifactsConfig(**OFF, poisson=PoissonConfig(enabled=True, photons=Dist.const(1e12)))
    proj = 3.0 * torch.rand((4, 16, 16), generator=torch.Generator().manual_seed(2))
    params = sample_sinogram_artifacts(cfg, 4, np.random.default_rng(0))
    out = apply_sinogram_artifacts(proj, np.zeros(4), params)
    assert float((out - proj).abs().max()) < 1e-3


def test_poisson_variance_at_moderate_dose() -> None:
    i0, p = 1000.0, 1.0
    cfg = SinogramArtifactsConfig(**OFF, poisson=PoissonConfig(enabled=True, photons=Dist.const(i0),
                                                                 attenuation_scale=1.0))
    proj = torch.full((20, 64, 64), p)
    params = sample_sinogram_artifacts(cfg, 20, np.random.default_rng(0))
    out = apply_sinogram_artifacts(proj, np.zeros(20), params).double()
    expected_var = 1.0 / (i0 * np.exp(-p))
    assert float(out.var()) == pytest.approx(expected_var, rel=0.05)
    assert float(out.mean()) == pytest.approx(p, abs=3e-3)


def test_poisson_zero_counts_hit_the_floor() -> None:
    cfg = SinogramArtifactsConfig(**OFF, poisson=PoissonConfig(enabled=True, photons=Dist.const(10.0),
                                                                 attenuation_scale=1.0))
    params = sample_sinogram_artifacts(cfg, 1, np.random.default_rng(0))
    out = apply_sinogram_artifacts(torch.full((1, 8, 8), 50.0), [0.0], params)
    assert torch.allclose(out, torch.full_like(out, np.log(10.0)))


def test_poisson_auto_scale_is_the_voxel_size_in_um() -> None:
    """auto: s = 0.04 µm × voxel length (reference voxels); Var(p') = 1 / (I0·exp(−s·p)·s²)."""
    i0, p, voxel_length = 2000.0, 20.0, 4.0  # 128³ at auto scale: one voxel = 4 reference voxels
    cfg = SinogramArtifactsConfig(**OFF, poisson=PoissonConfig(enabled=True, photons=Dist.const(i0)))
    params = sample_sinogram_artifacts(cfg, 20, np.random.default_rng(0), voxel_length=voxel_length)
    s = params["poisson"]["attenuation_scale"]
    assert s == pytest.approx(0.04 * voxel_length)
    out = apply_sinogram_artifacts(torch.full((20, 64, 64), p), np.zeros(20), params).double()
    assert float(out.var()) == pytest.approx(1.0 / (i0 * np.exp(-s * p) * s * s), rel=0.05)
    assert float(out.mean()) == pytest.approx(p, abs=0.05)
    with pytest.raises(ValueError, match="attenuation_scale"):
        PoissonConfig(attenuation_scale=0.0)


def test_integer_misalignment_is_a_roll_away_from_the_edges() -> None:
    proj = _proj(3, 20, 24)
    axial, det = [1.0, 0.0, -2.0], [2.0, -3.0, 0.0]
    out = shift_projections(proj, axial, det)
    for a in range(3):
        rolled = torch.roll(proj[a], shifts=(int(axial[a]), int(det[a])), dims=(0, 1))
        assert torch.equal(out[a, 3:-3, 4:-4], rolled[3:-3, 4:-4])
    mean0 = proj[0].mean()
    assert torch.allclose(out[0, 0, :], mean0.expand(24))  # uncovered row filled with the mean
    assert torch.allclose(out[0, :, :2], mean0.expand(20, 2))


def test_subpixel_misalignment_interpolates_linearly() -> None:
    ramp = torch.arange(24, dtype=torch.float32).expand(2, 10, 24).contiguous()
    out = shift_projections(ramp, [0.0, 0.0], [0.5, -0.25])
    assert torch.allclose(out[0, :, 2:-2], ramp[0, :, 2:-2] - 0.5)
    assert torch.allclose(out[1, :, 2:-2], ramp[1, :, 2:-2] + 0.25)


def test_misalignment_draws_per_projection_shifts() -> None:
    cfg = SinogramArtifactsConfig(**OFF, misalignment=MisalignmentConfig(enabled=True))
    params = sample_sinogram_artifacts(cfg, 200, np.random.default_rng(0))
    det = np.asarray(params["misalignment"]["detector_shift_px"])
    assert det.shape == (200,) and abs(det.mean()) < 0.3 and det.std() == pytest.approx(1.0, rel=0.2)
    assert np.abs(det).max() <= 5.0


def test_detector_noise_statistics() -> None:
    cfg = SinogramArtifactsConfig(
        **OFF,
        detector_noise=DetectorNoiseConfig(enabled=True, mean=Dist.const(0.5), sigma=Dist.const(0.2)),
    )
    proj = _proj(10, 32, 32)
    params = sample_sinogram_artifacts(cfg, 10, np.random.default_rng(0))
    noise = (apply_sinogram_artifacts(proj, np.zeros(10), params) - proj).double()
    assert float(noise.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(noise.std()) == pytest.approx(0.2, rel=0.03)


def test_same_params_identical_bytes_across_threads_and_json() -> None:
    cfg = SinogramArtifactsConfig(
        misalignment=MisalignmentConfig(enabled=True),
        poisson=PoissonConfig(enabled=True, attenuation_scale=0.01),
        detector_noise=DetectorNoiseConfig(enabled=True),
    )
    proj = _proj(12, 24, 32)
    angles = np.linspace(-50, 50, 12)
    params = sample_sinogram_artifacts(cfg, 12, np.random.default_rng(8))
    assert params == sample_sinogram_artifacts(cfg, 12, np.random.default_rng(8))
    round_trip = json.loads(json.dumps(params))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = apply_sinogram_artifacts(proj, angles, params, BANK)
        torch.set_num_threads(2)
        b = apply_sinogram_artifacts(proj, torch.tensor(angles), round_trip, BANK)
    finally:
        torch.set_num_threads(before)
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert not torch.equal(a, proj)


def test_angle_count_mismatch_raises() -> None:
    params = sample_sinogram_artifacts(SinogramArtifactsConfig(), 4, np.random.default_rng(0))
    with pytest.raises(ValueError):
        apply_sinogram_artifacts(torch.zeros((4, 4, 4)), [0.0, 1.0, 2.0], params)


def test_rotate_planes_quarter_turn_and_identity() -> None:
    from simaq_factory.acquisition.sinogram import rotate_planes

    img = torch.rand((2, 9, 9), generator=torch.Generator().manual_seed(1))
    assert torch.equal(rotate_planes(img, 0.0), img)
    # +90 deg turns the H axis onto +W: a pixel at (h, w) (from the centre) moves to (−w, h)
    turned = rotate_planes(img, 90.0)
    torch.testing.assert_close(turned, torch.rot90(img, k=1, dims=(1, 2)), atol=1e-5, rtol=0)
    # a smooth image survives a turn and its inverse (bilinear twice) almost unchanged
    smooth = _blob(17, (2.0, 1.0, -3.0), r=3.0)[8][None]
    back = rotate_planes(rotate_planes(smooth, 5.0), -5.0)
    err = float((back - smooth).abs().max())
    assert err < 0.05 * float(smooth.max())
    assert float((rotate_planes(rotate_planes(smooth, 5.0), 5.0) - smooth).abs().max()) > 3 * err


def _blob(n: int, at: tuple[float, float, float], r: float = 1.5) -> torch.Tensor:
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) - (n - 1) / 2,) * 3, indexing="ij")
    d2 = (z - at[0]) ** 2 + (y - at[1]) ** 2 + (x - at[2]) ** 2
    return torch.exp(-d2 / (2 * r * r))


def _centroids(proj: torch.Tensor) -> np.ndarray:
    """(A, 2) centre of mass (z, d) of each projection, relative to the detector centre."""
    p = proj.double()
    a, nz, nd = p.shape
    zz = torch.arange(nz, dtype=torch.float64)[:, None] - (nz - 1) / 2
    dd = torch.arange(nd, dtype=torch.float64)[None, :] - (nd - 1) / 2
    m = p.sum(dim=(1, 2))
    return torch.stack([(p * zz).sum(dim=(1, 2)) / m, (p * dd).sum(dim=(1, 2)) / m], 1).numpy()


@pytest.mark.parametrize("psi", [0.0, 3.0, -4.0])
def test_tilted_axis_tracks_a_point_along_the_tilted_detector_line(psi: float) -> None:
    """A point off the axis moves along the line at −ψ to D; a point on the tilted axis stays put."""
    from simaq_factory.acquisition.sinogram import project_tilted_axis
    from simaq_factory.tomo import Geometry, forward_project

    n = 48
    angles = np.deg2rad(np.arange(-60.0, 61.0, 10.0))
    geom = Geometry(n=n, angles=tuple(angles))
    off_axis = _blob(n, (4.0, 10.0, 2.0))
    c = _centroids(project_tilted_axis(off_axis, geom, psi, forward_project))
    slope = np.polyfit(c[:, 1], c[:, 0], 1)[0]  # dz/dd over the tilt series
    assert abs(slope + np.tan(np.deg2rad(psi))) < 0.01, slope
    # the point at height 8 on the tilted axis, (8 cos ψ, 0, 8 sin ψ), projects to the same place
    t = np.deg2rad(psi)
    on_axis = _blob(n, (8 * np.cos(t), 0.0, 8 * np.sin(t)))
    c = _centroids(project_tilted_axis(on_axis, geom, psi, forward_project))
    assert c.std(axis=0).max() < 0.03, c
    np.testing.assert_allclose(c.mean(axis=0), [8 * np.cos(t), 8 * np.sin(t)], atol=0.05)
    # at 0 deg the tilt is invisible
    zero = Geometry(n=n, angles=(0.0,))
    plain = forward_project(off_axis, zero)
    tilted = project_tilted_axis(off_axis, zero, psi, forward_project)
    assert float(np.corrcoef(plain.ravel(), tilted.ravel())[0, 1]) > 0.995


def test_axis_tilt_is_drawn_once_per_series_and_only_when_enabled() -> None:
    off = sample_sinogram_artifacts(SinogramArtifactsConfig(**OFF), 5, np.random.default_rng(0))
    assert "axis_tilt_deg" not in off["misalignment"]
    cfg = SinogramArtifactsConfig(**OFF, misalignment=MisalignmentConfig(
        enabled=True, axis_tilt_deg=Dist.normal(0.0, 1.0, min=-2.0, max=2.0)))
    tilts = [sample_sinogram_artifacts(cfg, 5, np.random.default_rng(s))["misalignment"]["axis_tilt_deg"]
             for s in range(200)]
    assert all(-2.0 <= v <= 2.0 for v in tilts) and 0.7 < float(np.std(tilts)) < 1.2
    # adding the tilt draw left the per-projection shifts as they were (drawn first)
    a = sample_sinogram_artifacts(cfg, 5, np.random.default_rng(3))["misalignment"]
    b = sample_sinogram_artifacts(SinogramArtifactsConfig(**OFF, misalignment=MisalignmentConfig(enabled=True)),
                                  5, np.random.default_rng(3))["misalignment"]
    assert a["detector_shift_px"] == b["detector_shift_px"] and a["axial_shift_px"] == b["axial_shift_px"]


def test_ice_path_is_in_this_volumes_voxel_units() -> None:
    """The ice thickness is in reference voxels: with voxels 4 reference voxels long the path is
    h / 4 / cos θ of them, so the ice keeps its proportion to the cells' line integrals."""
    cfg = SinogramArtifactsConfig(
        flicker=FlickerConfig(enabled=False),
        ice_thickness=IceThicknessConfig(thickness=Dist.const(2000.0), lac=Dist.const(0.01)),
    )
    angles = np.array([-60.0, -20.0, 0.0, 35.0, 70.0])
    params = sample_sinogram_artifacts(cfg, len(angles), np.random.default_rng(1), voxel_length=4.0)
    out = apply_sinogram_artifacts(torch.zeros((5, 8, 8)), angles, params).double()
    want = 2000.0 * 0.01 / (4.0 * np.cos(np.deg2rad(angles)))
    np.testing.assert_allclose(out.mean(dim=(1, 2)).numpy(), want, rtol=1e-5)
    # a round trip through JSON keeps the voxel length
    again = apply_sinogram_artifacts(torch.zeros((5, 8, 8)), angles, json.loads(json.dumps(params)))
    assert torch.equal(again.double(), out)


def test_enabling_one_stage_leaves_the_other_stages_draws_unchanged() -> None:
    """Each stage draws from its own child of the rng: switching the misalignment on (which draws
    shifts and a tilt) leaves the flicker, ice, Poisson and detector draws as they were."""
    base = dict(poisson=PoissonConfig(enabled=True), detector_noise=DetectorNoiseConfig(enabled=True))
    off = sample_sinogram_artifacts(SinogramArtifactsConfig(**base), 9, np.random.default_rng(11))
    on = sample_sinogram_artifacts(
        SinogramArtifactsConfig(**base, misalignment=MisalignmentConfig(enabled=True)), 9, np.random.default_rng(11)
    )
    assert on["misalignment"]["applied"] and not off["misalignment"]["applied"]
    for stage in ("flicker", "ice_thickness", "poisson", "detector_noise"):
        assert on[stage] == off[stage], stage
    assert len({on["ice_thickness"]["seed"], on["poisson"]["seed"], on["detector_noise"]["seed"]}) == 3
