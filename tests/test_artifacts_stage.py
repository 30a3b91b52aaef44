"""Phantom-space artifact stage (reference §2.1–§2.5): order, masks, cracks, texture, determinism."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from simaq_factory.artifacts import (
    ArtifactsConfig,
    BanksConfig,
    BlurConfig,
    FiducialsConfig,
    IceCracksConfig,
    PerlinTextureConfig,
    apply_artifacts,
    memory_banks,
    sample_artifacts,
)
from simaq_factory.artifacts.config import CrackBankConfig, PerlinHiBankConfig, PerlinLoBankConfig
from simaq_factory.artifacts.stage import background_mask, cylinder_mask
from simaq_factory.recipe.fields import Dist
from simaq_factory.recipe.schema import parse_section, section_to_json


def _phantom(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    z, y, x = torch.meshgrid(*(torch.arange(n),) * 3, indexing="ij")
    labels = torch.zeros((n, n, n), dtype=torch.uint8)
    labels[((z - n // 2) ** 2 + (y - n // 2) ** 2 + (x - n // 2) ** 2) < (n // 4) ** 2] = 1
    labels[((z - n // 2) ** 2 + (y - n // 2) ** 2 + (x - n // 2 - 3) ** 2) < 4**2] = 2
    lac = torch.tensor([0.0, 0.346, 0.182], dtype=torch.float32)
    return lac[labels.long()], labels


# small banks keep these tests fast (the defaults are sized for real volumes)
SMALL_BANKS = BanksConfig(
    perlin_lo_3d=PerlinLoBankConfig(entries=2, edge=8),
    perlin_hi_3d=PerlinHiBankConfig(entries=2, edge=16, res=4, octaves=1),
    cracks=CrackBankConfig(entries=2, edge=16),
)


def _banks(cfg: ArtifactsConfig, shape: tuple[int, ...]):
    return memory_banks(cfg, tuple(shape), 7, torch.device("cpu"))


#: the texture alone, amplitude 0.1
TEXTURE_ONLY = ArtifactsConfig(
    blur=BlurConfig(probability=0.0),
    fiducials=FiducialsConfig(enabled=False),
    ice_cracks=IceCracksConfig(probability=0.0),
    perlin=PerlinTextureConfig(amplitude=Dist.const(0.1)),
    banks=SMALL_BANKS,
)


def test_texture_only_on_background_inside_cylinder() -> None:
    phantom, labels = _phantom()
    cfg = TEXTURE_ONLY
    params = sample_artifacts(cfg, labels.shape, labels, 0.2, np.random.default_rng(0))
    assert not params["ice_cracks"]["applied"]
    noisy = apply_artifacts(phantom, labels, params, _banks(cfg, labels.shape))
    diff = (noisy - phantom).numpy()
    allowed = (background_mask(phantom, labels) & cylinder_mask(tuple(phantom.shape), 2.0, phantom.device)).numpy()
    assert np.all(diff[~allowed] == 0)
    assert np.all(diff >= 0) and diff.max() <= 0.1 + 1e-7
    assert (diff[allowed] > 0).mean() > 0.99 and diff[allowed].max() > 0.05
    assert allowed[:, 0, :].sum() == 0 and allowed[:, :, 0].sum() == 0  # outside the cylinder
    # three acquisition axes: no cylinder about z (the y and x acquisitions have their own)
    whole = sample_artifacts(cfg, labels.shape, labels, 0.2, np.random.default_rng(0), texture_cylinder=False)
    assert whole["perlin"]["cylinder_padding"] is None
    diff3 = (apply_artifacts(phantom, labels, whole, _banks(cfg, labels.shape)) - phantom).numpy()
    background = background_mask(phantom, labels).numpy()
    assert np.all(diff3[~background] == 0) and (diff3[background & ~allowed] > 0).mean() > 0.99
    np.testing.assert_array_equal(diff3[allowed], diff[allowed])  # the same texture


@pytest.mark.parametrize("shape", [(16, 40, 40), (40, 40, 40), (24, 40, 32)])
def test_the_texture_spans_its_whole_amplitude_on_any_volume_shape(shape) -> None:
    """Reference §2.5: the texture is min-max normalised where it is used; a non-cubic volume's box
    of the bank cube spanned less (0.83 of the amplitude at worst, with a constant offset)."""
    phantom = torch.zeros(shape)
    labels = torch.zeros(shape, dtype=torch.uint8)
    cfg = TEXTURE_ONLY
    for seed in range(3):
        params = sample_artifacts(cfg, shape, labels, 0.2, np.random.default_rng(seed), texture_cylinder=False)
        added = apply_artifacts(phantom, labels, params, _banks(cfg, shape)).numpy()
        assert added.min() == 0.0 and abs(float(added.max()) - 0.1) < 1e-7, (shape, seed)


def test_reference_order_mask_before_blur_then_beads_then_texture() -> None:
    phantom, labels = _phantom()
    cfg = ArtifactsConfig(
        blur=BlurConfig(sigma=Dist.const(1.5), nominal_taps=None),
        fiducials=FiducialsConfig(count=Dist.const(4), radius=Dist.const(1.5)),
        perlin=PerlinTextureConfig(amplitude=Dist.const(0.08)),
        banks=SMALL_BANKS,
    )
    banks = _banks(cfg, labels.shape)
    params = sample_artifacts(cfg, labels.shape, labels, 1.2, np.random.default_rng(1))
    assert params["blur"]["applied"] and params["blur"]["radius"] == 5
    assert len(params["fiducials"]["beads"]) == 4
    assert params["ice_cracks"]["applied"]
    with_texture = apply_artifacts(phantom, labels, params, banks)
    no_texture_params = copy.deepcopy(params)
    no_texture_params["perlin"]["applied"] = False
    no_texture = apply_artifacts(phantom, labels, no_texture_params, banks)
    texture = (with_texture - no_texture).numpy()
    allowed = (background_mask(phantom, labels) & cylinder_mask(tuple(phantom.shape), 2.0, phantom.device)).numpy()
    assert np.all(texture[~allowed] == 0)
    # the blur spreads the cell into the background, and the texture is still added there (M first)
    halo = allowed & (no_texture.numpy() > 1e-3) & (no_texture.numpy() < 0.3)
    assert halo.sum() > 100 and (texture[halo] > 0).mean() > 0.99
    # cell voxels carry blurred cell values, never a bead's LAC
    cells = labels.numpy() != 0
    assert no_texture.numpy()[cells].max() < 0.35


def test_same_params_identical_bytes_and_threads_and_json() -> None:
    phantom, labels = _phantom(32)
    cfg = ArtifactsConfig(banks=SMALL_BANKS)
    banks = _banks(cfg, labels.shape)
    params = sample_artifacts(cfg, labels.shape, labels, 0.5, np.random.default_rng(42))
    again = sample_artifacts(cfg, labels.shape, labels, 0.5, np.random.default_rng(42))
    assert params == again
    round_trip = json.loads(json.dumps(params))
    before = torch.get_num_threads()
    phantom_copy = phantom.clone()
    try:
        torch.set_num_threads(1)
        a = apply_artifacts(phantom, labels, params, banks)
        torch.set_num_threads(2)
        b = apply_artifacts(phantom, labels, round_trip, banks)
    finally:
        torch.set_num_threads(before)
    assert a.numpy().tobytes() == b.numpy().tobytes()
    assert torch.equal(phantom, phantom_copy)  # the clean phantom is untouched
    other = sample_artifacts(cfg, labels.shape, labels, 0.5, np.random.default_rng(43))
    assert other != params


def test_default_config_matches_reference_and_round_trips() -> None:
    cfg = ArtifactsConfig()
    assert cfg.blur.probability == 1.0 and cfg.blur.sigma == Dist.normal(3.0, 2.0, 1.0, 5.0)
    assert cfg.blur.nominal_taps == 5 and cfg.blur.kernel_size is None  # bug 12 fixed, its strength kept
    assert cfg.fiducials.count == Dist.normal(16.0, 4.0, 3.0, 25.0)
    assert cfg.perlin.amplitude == Dist.normal(0.1, 0.02, 0.0, 0.2)  # bug 13 fixed: no atom at 0.1
    assert cfg.perlin.cylinder_padding == 2.0
    assert cfg.ice_cracks.probability == 1.0
    assert cfg.ice_cracks.amplitude == Dist.normal(0.2, 0.02, 0.05, 0.5)
    data = section_to_json(cfg)
    assert parse_section(ArtifactsConfig, data) == cfg
    legacy = parse_section(ArtifactsConfig, {"blur": {"kernel_size": 5, "nominal_taps": None}})
    assert legacy.blur.kernel_size == 5


def test_blur_draws_the_reference_strength_with_a_kernel_sized_from_it() -> None:
    """The default draws the reference's nominal σ, clip(N(3, 2), 1, 5), and blurs with the σ its
    5-tap kernel really applied (§2.2): the std of that kernel, 0.96-1.39, never a fixed 5³ cut."""
    from simaq_factory.artifacts.blur import effective_sigma, gaussian_kernel_1d

    for s in (0.5, 1.0, 3.0, 5.0, 40.0):
        k = gaussian_kernel_1d(s, 2, torch.device("cpu")).numpy()
        x = np.arange(-2, 3)
        assert effective_sigma(s, 5) == pytest.approx(float(np.sqrt((k * x * x).sum())), rel=1e-12)
    assert effective_sigma(1.0, 5) == pytest.approx(0.961, abs=1e-3)
    assert effective_sigma(5.0, 5) == pytest.approx(1.394, abs=1e-3)
    _, labels = _phantom(24)
    for seed in range(4):
        few_beads = ArtifactsConfig(fiducials=FiducialsConfig(count=Dist.const(1)))  # 24³ holds few at 1.2
        b = sample_artifacts(few_beads, labels.shape, labels, 1.2, np.random.default_rng(seed))["blur"]
        assert b["sigma"] == pytest.approx(effective_sigma(b["sigma_drawn"], 5), rel=1e-12)  # at 1.2 voxels/unit
        assert b["radius"] == int(np.ceil(3.0 * b["sigma"]))
    drawn = ArtifactsConfig().blur.sigma.sample(np.random.default_rng(0), 2000)
    used = np.array([effective_sigma(float(v), 5) for v in drawn])
    assert drawn.min() == 1.0 and drawn.max() == 5.0 and 2.8 < drawn.mean() < 3.2
    assert 0.961 <= used.min() and used.max() <= 1.395 and np.median(used) > 1.3  # mostly near the top


def test_sub_stage_draws_are_independent() -> None:
    """Changing the bead settings does not change the blur or texture draws."""
    _, labels = _phantom(24)
    a = sample_artifacts(ArtifactsConfig(), labels.shape, labels, 0.3, np.random.default_rng(9))
    b = sample_artifacts(
        ArtifactsConfig(fiducials=FiducialsConfig(count=Dist.const(3))), labels.shape, labels, 0.3, np.random.default_rng(9)
    )
    assert a["blur"] == b["blur"] and a["perlin"] == b["perlin"]
    assert a["ice_cracks"] == b["ice_cracks"]


@pytest.mark.parametrize("voxels_per_unit, sigma, radius", [(0.6, 1.0, 3), (1.2, 2.0, 6), (2.4, 4.0, 12)])
def test_blur_sigma_is_converted_to_this_volumes_voxels(voxels_per_unit: float, sigma: float, radius: int) -> None:
    """σ is drawn in reference voxels (1.2 per generation unit): a volume at ``voxels_per_unit``
    blurs with σ·voxels_per_unit/1.2 of its own voxels, and the kernel radius follows (ceil(3σ))."""
    _, labels = _phantom(24)
    cfg = ArtifactsConfig(
        blur=BlurConfig(probability=1.0, sigma=Dist.const(2.0), nominal_taps=None),
        fiducials=FiducialsConfig(count=Dist.const(1)),
    )
    b = sample_artifacts(cfg, labels.shape, labels, voxels_per_unit, np.random.default_rng(0))["blur"]
    assert b["applied"] and b["sigma_drawn"] == 2.0 and b["sigma_reference_voxels"] == 2.0
    assert b["sigma"] == pytest.approx(sigma, rel=1e-12) and b["radius"] == radius


def test_a_small_volume_is_blurred_with_the_sigma_its_record_states() -> None:
    """At 64³ (8x coarser than 512³) the reference-strength blur is about 0.15 voxels: the record's
    sigma_applied (the kernel's std) is that σ, and the blur moves intensity to the neighbours.
    A record without "kernel" (written before the discrete kernel) still renders as it was, with the
    sampled Gaussian."""
    from simaq_factory.artifacts.blur import gaussian_blur_3d

    phantom, labels = _phantom(24)
    cfg = ArtifactsConfig(fiducials=FiducialsConfig(count=Dist.const(1)))
    params = sample_artifacts(cfg, labels.shape, labels, 1.2 / 8, np.random.default_rng(3))
    b = params["blur"]
    assert b["kernel"] == "discrete" and 0.1 < b["sigma"] < 0.2 and b["radius"] == 2
    assert b["sigma_applied"] == pytest.approx(b["sigma"], rel=0.02)
    noisy_bytes = gaussian_blur_3d(phantom, b["sigma"], b["radius"], "discrete")
    assert not torch.equal(noisy_bytes, phantom.float())
    # an older record: the sampled kernel, as it was written
    old = {k: v for k, v in b.items() if k not in ("kernel", "sigma_applied")}
    assert torch.equal(gaussian_blur_3d(phantom, old["sigma"], old["radius"]), gaussian_blur_3d(
        phantom, old["sigma"], old["radius"], "sampled"))
    legacy = ArtifactsConfig(blur=BlurConfig(kernel_size=5, nominal_taps=None), fiducials=FiducialsConfig(count=Dist.const(1)))
    assert sample_artifacts(legacy, labels.shape, labels, 1.2, np.random.default_rng(3))["blur"]["kernel"] == "sampled"
