"""What the model's depth asks of the training data, checked when a run starts: in-plane sizes
that are multiples of 2**(model.depth-1) only where the network sees whole slices (no data.crop)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from simaq_factory.errors import BadInput
from simaq_train.cli import cli
from simaq_train.config import TrainConfig, config_from_dict
from simaq_train.data.build import build_stream, resolve_classes
from simaq_train.testing import write_synthetic_dataset


@pytest.fixture(scope="module")
def ds20(tmp_path_factory) -> Path:
    """Two (8, 20, 20) samples: 20 is a multiple of 4 but not of 8 (model.depth 4)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("wd") / "ds", n_samples=2, shape=(8, 20, 20), seed=3)


def _cfg(train: Path, depth: int, **data) -> TrainConfig:
    return config_from_dict({"seed": 1, "data": {"train": [str(train)], "fov_margin": 2.0, **data},
                             "model": {"init_features": 2, "depth": depth, "out_channels": 0},
                             "optim": {"batch_size": 2}, "augment": {"enable": False}})


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
