"""What the model's depth asks of the training data, checked when a run starts: a window no deeper
than the encoder can see (±2·model.depth slices), and in-plane sizes that are multiples of
2**(model.depth-1) only where the network sees whole slices (no data.crop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from simaq_factory.errors import BadInput
from simaq_train.cli import cli
from simaq_train.config import TrainConfig, config_from_dict, load_config
from simaq_train.data.build import build_stream, check_window_reach, resolve_classes
from simaq_train.inference import model_from_checkpoint
from simaq_train.model import CenterSliceUNet
from simaq_train.testing import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ds20(tmp_path_factory) -> Path:
    """Two (8, 20, 20) samples: 20 is a multiple of 4 but not of 8 (model.depth 4)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("wd") / "ds", n_samples=2, shape=(8, 20, 20), seed=3)


def _cfg(train: Path, depth: int, **data) -> TrainConfig:
    return config_from_dict({"seed": 1, "data": {"train": [str(train)], "fov_margin": 2.0, **data},
                             "model": {"init_features": 2, "depth": depth, "out_channels": 0},
                             "optim": {"batch_size": 2}, "augment": {"enable": False}})


def test_a_window_deeper_than_the_encoder_sees_is_refused_naming_both_keys(ds20):
    # depth 1 sees ±2 slices: 5 is the deepest window whose every slice reaches the logits
    build_stream(resolve_classes(_cfg(ds20, depth=1, window=5)))
    with pytest.raises(BadInput) as err:
        build_stream(resolve_classes(_cfg(ds20, depth=1, window=7)))
    msg = str(err.value)
    assert err.value.path == "data.window" and "\n" not in msg
    assert "model.depth 1" in msg and "±2" in msg and "data.window <= 5" in msg and "model.depth >= 2" in msg
    with pytest.raises(BadInput, match=r"data.window <= 9 or model.depth >= 3"):
        check_window_reach(_cfg(ds20, depth=2, window=11))
    check_window_reach(_cfg(ds20, depth=2, window=9))


def test_the_paper_defaults_and_the_ready_configs_pass_the_window_check():
    check_window_reach(TrainConfig())  # window 7, depth 5: ±3 of ±10
    for path in sorted((REPO / "configs").glob("*.yaml")):
        check_window_reach(load_config(path))


def test_a_checkpoint_of_such_a_window_still_loads_for_evaluate_and_predict(tmp_path):
    """The check is a training-time one: a model trained before it existed stays usable."""
    cfg = config_from_dict({"data": {"window": 7}, "model": {"init_features": 2, "depth": 1}})
    model = CenterSliceUNet(cfg.model)
    ckpt = {"config": cfg.to_dict(), "model": model.state_dict(), "ema": None}
    loaded, got = model_from_checkpoint(ckpt, tmp_path / "old.pt")
    assert got.data.window == 7 and got.model.depth == 1
    assert loaded(torch.zeros(1, 1, 7, 8, 8)).shape == (1, 4, 8, 8)


def test_the_fit_cli_refuses_the_window_before_the_run_folder_exists(ds20, tmp_path):
    out = tmp_path / "run"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": [str(ds20)], "fov_margin": 2.0},
                                    "model": {"init_features": 2, "depth": 3, "out_channels": 0},
                                    "run": {"out": str(out), "device": "cpu"}}))
    r = CliRunner().invoke(cli, ["fit", str(path), "--set", "model.depth=1"])
    assert r.exit_code == 2, r.output
    assert "data.window: 7 slices" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_with_a_crop_whole_slices_need_not_be_multiples_of_the_divisor(ds20):
    # without a crop the network would see 20 × 20 slices at depth 4 (divisor 8): refused
    with pytest.raises(BadInput, match=r"\(20, 20\) not divisible by 2\*\*\(model.depth-1\)=8 \(or set data.crop"):
        build_stream(resolve_classes(_cfg(ds20, depth=4)))
    # with a 16² crop it only ever sees 16 × 16 windows
    stream, info = build_stream(resolve_classes(_cfg(ds20, depth=4, crop=16)))
    assert info["shape_yx"] == [20, 20]
    batch = stream.make_batch(np.arange(2), epoch=0, j=0)
    assert tuple(batch["image"].shape[-2:]) == (16, 16) and tuple(batch["target"].shape[-2:]) == (16, 16)


def test_fit_with_a_crop_trains_and_validates_on_slices_that_are_no_multiple(ds20, tmp_path):
    """End to end: training on 16² crops of 20² slices at depth 4, validation predicts the whole
    20² slices (padded to 24² and cropped back)."""
    cfg = {"seed": 2, "data": {"train": [str(ds20)], "val": [str(ds20)], "val_max_samples": 1, "crop": 16,
                               "fov_margin": 2.0, "background_drop": 0.0},
           "augment": {"enable": False},
           "model": {"init_features": 2, "depth": 4, "out_channels": 0},
           "optim": {"batch_size": 2, "accumulate": 1, "ema_decay": 0.0, "epochs": 1},
           "run": {"out": str(tmp_path / "run"), "device": "cpu", "log_every": 1, "checkpoint_every": 1,
                   "progress": False}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(cli, ["fit", str(path)])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(rec["kind"] == "train" for rec in lines)
    assert any(rec["kind"] == "val" for rec in lines), [rec["kind"] for rec in lines]
