"""simaq_train units without a dataset: inference padding and cropping, evaluation summaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from simaq_train.evaluate import summarise
from simaq_train.inference import predict_volume
from simaq_train.metrics import iou_dice


class _ThresholdCentre(nn.Module):
    """Stub model: class 1 where the centre slice of the window is > 0, class 0 elsewhere."""

    divisor = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 5 and x.shape[1] == 1
        assert x.shape[-2] % self.divisor == 0 and x.shape[-1] % self.divisor == 0
        centre = x[:, 0, x.shape[2] // 2]
        return torch.stack([torch.zeros_like(centre), (centre > 0).to(centre.dtype) * 2.0 - 1.0], dim=1)


def test_predict_volume_crops_the_centre_of_a_padded_plane():
    # H = 8·2 + 3, W = 8·3 + 3: padded symmetrically to 24 × 32 (1 + 4 and 2 + 3 rows of zeros)
    rng = np.random.default_rng(3)
    vol = rng.normal(size=(5, 19, 27)).astype(np.float32)
    vol[:, :4, :] = -1.0  # asymmetric: a negative band at the top, a positive one at the left
    vol[:, :, :3] = 1.0
    out = predict_volume(_ThresholdCentre(), vol, window=3, batch_size=2, amp="off")
    assert out.shape == vol.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, (vol > 0).astype(np.uint8))


def test_a_cpu_prediction_that_would_not_fit_memory_runs_fewer_slices_at_a_time(monkeypatch, caplog):
    """The batch is cut to what 70 % of the available memory holds (the paper's model at the default
    8 needs ~11 GiB and was OOM-killed without a word on small machines); the result is the same."""
    from simaq_train import bench, inference
    from simaq_train.model import CenterSliceUNet, ModelConfig

    torch.manual_seed(0)
    model = CenterSliceUNet(ModelConfig(init_features=4, depth=2)).eval()
    vol = np.random.default_rng(0).normal(size=(9, 20, 22)).astype(np.float32)
    whole = predict_volume(model, vol, window=3, batch_size=8)
    need = {b: inference.forward_bytes(model, 3, 20, 22, b) for b in (1, 2, 3, 8)}
    assert need[1] < need[2] < need[3] < need[8]
    assert inference.cpu_batch_size(model, 3, 20, 22, 8) == 8  # this machine: plenty
    monkeypatch.setattr(bench, "host_memory_available", lambda: int(need[3] / 0.7) + 1)
    assert inference.cpu_batch_size(model, 3, 20, 22, 8) == 3
    seen = []
    real_model_forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: seen.append(x.shape[0]) or real_model_forward(x))
    monkeypatch.setattr(inference, "_said_batch", set())  # the call above warned once already
    caplog.clear()
    with caplog.at_level("WARNING", logger="simaq_train.inference"):
        cut = predict_volume(model, vol, window=3, batch_size=8)
    assert np.array_equal(cut, whole) and max(seen) == 3
    assert "--batch-size 8: a CPU forward pass of 8 windows of 3 × 20 × 22 needs about" in caplog.text
    monkeypatch.setattr(bench, "host_memory_available", lambda: 1)
    assert inference.cpu_batch_size(model, 3, 20, 22, 8) == 1


def test_mean_iou_foreground_averages_classes_from_one_only(tmp_path):
    # rows = target, columns = prediction; class 0 (background) is perfect, foreground is not
    cm = np.array([[50, 0, 0],
                   [0, 3, 1],
                   [0, 2, 2]], dtype=np.int64)
    iou, _ = iou_dice(cm)
    assert iou == pytest.approx([1.0, 3 / 6, 2 / 5])
    fg_mean = (3 / 6 + 2 / 5) / 2  # the mean over all three classes would be 0.633…
    rep = summarise(tmp_path, [cm, cm], {"label_map": {"0": "bg", "1": "cell", "2": "vac"}})
    assert rep["foreground_classes"] == ["cell", "vac"]
    assert rep["mean_iou_foreground"] == pytest.approx(fg_mean, rel=1e-12)
    assert rep["pooled"]["mean_iou_foreground"] == pytest.approx(fg_mean, rel=1e-12)
    assert [row["mean_iou"] for row in rep["per_sample"]] == pytest.approx([fg_mean, fg_mean], rel=1e-12)


def test_postprocess_fills_holes_and_drops_components_below_the_ball_volume():
    """Per class: 3D hole filling, then 18-connected components smaller than 4/3·π·r³ removed."""
    from simaq_train.inference import PostClass, postprocess

    n = 32
    z, y, x = np.mgrid[:n, :n, :n]
    r = np.sqrt((z - 15.5) ** 2 + (y - 15.5) ** 2 + (x - 15.5) ** 2)
    seg = np.zeros((n, n, n), np.uint8)
    seg[(r <= 10) & (r > 8)] = 1  # a hollow ball: its cavity is a hole
    seg[1:3, 1:3, 1:3] = 1  # 8 voxels, apart from the ball
    seg[26:31, 26:31, 26:31] = 1  # 125 voxels
    radius = 3.0  # 4/3·π·27 ≈ 113 voxels: the 8-voxel blob goes, the 125-voxel one stays
    out = postprocess(seg, (PostClass(1, (1,), 0.0, radius),), scale=1.0)
    assert out.dtype == np.uint8 and set(np.unique(out).tolist()) == {0, 1}
    assert (out[r <= 10] == 1).all()  # the cavity is filled
    assert (out[1:3, 1:3, 1:3] == 0).all()
    assert (out[26:31, 26:31, 26:31] == 1).all()
    assert ((out == 1) == ((r <= 10) | _box(n, 26, 31))).all()  # nothing else


def test_postprocess_keeps_organelles_only_inside_the_cells_it_keeps():
    """A cell removed as too small took nothing with it: its vacuole and droplet stayed, organelles
    with no cell around them (the reference filters each class on its own)."""
    from simaq_train.inference import PostClass, postprocess

    n = 40
    z, y, x = np.mgrid[:n, :n, :n]
    big = np.sqrt((z - 12.0) ** 2 + (y - 20.0) ** 2 + (x - 20.0) ** 2) <= 10
    small = np.sqrt((z - 32.0) ** 2 + (y - 32.0) ** 2 + (x - 32.0) ** 2) <= 5  # 515 voxels: below the size
    seg = np.zeros((n, n, n), np.uint8)
    seg[big | small] = 1
    for cz, cy, cx in ((12, 20, 20), (32, 32, 32)):  # a vacuole and a droplet in each cell
        seg[cz - 2:cz + 2, cy - 2:cy + 2, cx - 5:cx - 1] = 2
        seg[cz - 1:cz + 1, cy - 1:cy + 1, cx + 2:cx + 4] = 3
    classes = (PostClass(1, (1, 2, 3), 0.0, 7.0), PostClass(2, (2, 3), 0.0, 1.0), PostClass(3, (3,), 0.0, 0.5))
    out = postprocess(seg, classes, scale=1.0)
    assert not out[small].any()  # the small cell and what was inside it
    assert np.array_equal(out[big], seg[big])  # the big one as it was
    assert not out[~(big | small)].any()


def _box(n: int, lo: int, hi: int) -> np.ndarray:
    m = np.zeros((n, n, n), bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_skip_edge_mode_keeps_every_centre_with_a_whole_window():
    """edge_mode "skip": windows whose slices all lie in the volume, i.e. centres half..depth-half-1;
    the other modes pad the ends and keep every labelled slice."""
    from simaq_train.data.sources import SliceIndex
    from simaq_train.data.stream import build_table

    depth, window = 10, 5
    ix = SliceIndex(labelled=np.ones(depth, bool), foreground=np.ones(depth, bool))
    rows, _ = build_table([[ix]], window, "skip", None)
    assert rows[:, 2].tolist() == list(range(2, 8))
    rows, _ = build_table([[ix]], window, "reflect", None)
    assert rows[:, 2].tolist() == list(range(depth))


# --- configuration: documented defaults and refusals ------------------------------------------------

def _documented_defaults(section: str) -> dict[str, str]:
    """``key`` → the default written right after it in docs/training.md's config table row."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    head = f"| `{section}` |"
    row = next(line for line in doc.splitlines() if line.startswith(head))
    return dict(re.findall(r"`(\w+)` \(`?([\w.+-]+)", row[len(head):]))


def test_data_and_optimiser_defaults_are_the_documented_ones():
    from simaq_train.config import TrainConfig

    cfg = TrainConfig()
    want = {"data": {"val_max_samples": 8, "window": 7, "crop": 0, "background_drop": 0.98, "fov_margin": 5.0,
                     "axes": "all", "shuffle_volumes": 4, "num_workers": 0, "drop_last": False,
                     "edge_mode": "reflect"},
            "optim": {"lr": 1e-4, "weight_decay": 1e-5, "batch_size": 16, "accumulate": 4, "clip": 1.0,
                      "ema_decay": 0.999, "amp": "auto", "epochs": 10, "max_steps": 0, "max_minutes": 0.0}}
    for section, values in want.items():
        got = getattr(cfg, section)
        assert {k: getattr(got, k) for k in values} == values, section
        doc = _documented_defaults(section)
        for key, value in values.items():  # the table says the same (first word after the key)
            text = doc[key]
            parsed = {"true": True, "false": False}.get(text, text)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                parsed = float(text)
            assert parsed == value, (section, key, text)
    assert cfg.data.real.ratio == 0.15 and float(_documented_defaults("data.real")["ratio"]) == 0.15


@pytest.mark.parametrize("over, key", [
    ({"optim": {"ema_decay": 1.0}}, "optim.ema_decay"),
    ({"optim": {"ema_decay": -0.1}}, "optim.ema_decay"),
    ({"data": {"crop": 18}, "model": {"depth": 3}}, "data.crop"),  # 18 % 4 != 0
    ({"data": {"crop": 20}, "model": {"depth": 4}}, "data.crop"),  # 20 % 8 != 0
])
def test_config_refuses_an_ema_decay_of_one_and_crops_the_model_cannot_pool(over, key):
    from simaq_factory.errors import BadInput
    from simaq_train.config import config_from_dict

    with pytest.raises(BadInput) as err:
        config_from_dict(over)
    assert key in str(err.value)


def test_config_accepts_the_boundary_values_next_to_the_refused_ones():
    from simaq_train.config import config_from_dict

    assert config_from_dict({"optim": {"ema_decay": 0.0}}).optim.ema_decay == 0.0
    assert config_from_dict({"optim": {"ema_decay": 0.9999}}).optim.ema_decay == 0.9999
    assert config_from_dict({"data": {"crop": 20}, "model": {"depth": 3}}).data.crop == 20
    assert config_from_dict({"data": {"crop": 24}, "model": {"depth": 4}}).data.crop == 24
    assert config_from_dict({"data": {"crop": 18}, "model": {"depth": 2}}).data.crop == 18


def test_amp_dtype_honours_bf16_on_cpu_and_says_when_fp16_cannot_run():
    """An explicit bf16 runs on CPU (autocast's CPU dtype); fp16 there falls back with a warning
    instead of silently; auto stays off on CPU."""
    import logging

    from simaq_train.engine.parts import amp_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("bf16", cpu) is torch.bfloat16 and amp_dtype("bf16", cuda) is torch.bfloat16
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cuda) is None
    assert amp_dtype("auto", cuda) is torch.float16 and amp_dtype("fp16", cuda) is torch.float16
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("simaq_train.engine.parts").addHandler(handler)
    try:
        assert amp_dtype("fp16", cpu) is None
    finally:
        logging.getLogger("simaq_train.engine.parts").removeHandler(handler)
    assert len(records) == 1 and "fp16 is for CUDA" in records[0].getMessage()
