"""simaq_train's Python API: one device convention (a name or a ``torch.device``, resolved as
``--device`` is) and argument checks that name the parameter, before any work."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from simaq_factory.errors import BadInput
from simaq_train.config import config_from_dict
from simaq_train.data.sources import FactorySource
from simaq_train.engine.parts import resolve_device, save_checkpoint
from simaq_train.evaluate import evaluate_checkpoint
from simaq_train.inference import load_model, predict_tomogram, predict_volume, segment
from simaq_train.model import CenterSliceUNet
from simaq_train.testing import write_synthetic_dataset

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 2-sample 8 × 32² dataset, an untrained 4-feature depth-2 checkpoint (window 3) and a volume."""
    tmp = tmp_path_factory.mktemp("api")
    ds = write_synthetic_dataset(tmp / "ds", n_samples=2, shape=(8, 32, 32))
    cfg = config_from_dict({"data": {"train": [str(ds)], "window": 3, "fov_margin": 2.0},
                            "model": {"init_features": 4, "depth": 2, "out_channels": 4}})
    torch.manual_seed(0)
    ckpt = tmp / "tiny.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "model": CenterSliceUNet(cfg.model).state_dict(), "ema": None})
    vol = np.random.default_rng(0).normal(size=(6, 20, 24)).astype(np.float32)
    return SimpleNamespace(ds=ds, ckpt=ckpt, vol=vol, tmp=tmp)


def test_resolve_device_takes_a_torch_device_and_checks_it_as_a_name(monkeypatch):
    assert resolve_device(CPU, "device") == CPU
    assert resolve_device(torch.device("cpu", 0), "device") == CPU  # prints "cpu:0", not a device name
    with pytest.raises(BadInput, match=r"^device: unknown device 'meta' \(expected auto, cpu, cuda or cuda:N\)$"):
        resolve_device(torch.device("meta"), "device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BadInput, match=r"^device: 'cuda:1' requested but CUDA is not available here$"):
        resolve_device(torch.device("cuda", 1), "device")


@pytest.mark.parametrize("device", ["cpu", "auto", CPU])
def test_every_inference_function_takes_a_device_name_or_a_torch_device(tiny, device, monkeypatch, tmp_path):
    """'cpu' crashed predict_volume / segment ('str' object has no attribute 'type') and 'auto' crashed
    load_model (torch has no device 'auto'); a torch.device was refused by predict_tomogram."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" is the CPU, here and on a GPU
    model, cfg = load_model(tiny.ckpt, device=device)
    ref = predict_volume(model, tiny.vol, window=3, batch_size=4, device=CPU)
    np.testing.assert_array_equal(predict_volume(model, tiny.vol, window=3, batch_size=4, device=device), ref)
    seg = segment(model, cfg, tiny.vol, batch_size=4, device=device)
    assert seg.shape == tiny.vol.shape and seg.dtype == np.uint8
    np.save(tmp_path / "tomo.npy", tiny.vol)
    res = predict_tomogram(tiny.ckpt, tmp_path / "tomo.npy", tmp_path / "seg.npy", post=False, device=device)
    assert res["shape"] == list(tiny.vol.shape)
    rep = evaluate_checkpoint(tiny.ckpt, tiny.ds, max_samples=1, device=device)
    assert rep["samples"] == 1


def test_a_bad_device_is_a_value_error_naming_the_parameter(tiny):
    model, _ = load_model(tiny.ckpt)
    with pytest.raises(ValueError, match=r"^device: unknown device 'gpu'"):
        load_model(tiny.ckpt, device="gpu")
    with pytest.raises(ValueError, match=r"^device: unknown device 'cuda:x'"):
        predict_volume(model, tiny.vol, window=3, device="cuda:x")
    # the CLI's messages are unchanged: predict_tomogram / evaluate_checkpoint take --device's value
    with pytest.raises(ValueError, match=r"^--device: unknown device 'gpu'"):
        predict_tomogram(tiny.ckpt, tiny.tmp / "none.npy", tiny.tmp / "x.npy", device="gpu")


@pytest.mark.parametrize("change,name", [
    ({"window": 4}, "window"),  # ran with 5 slices
    ({"window": 0}, "window"),  # a RuntimeError 21 frames deep in conv3d
    ({"window": 3.0}, "window"),
    ({"batch_size": 0}, "batch_size"),  # range() arg 3 must not be zero
    ({"edge_mode": "zeros"}, "edge_mode"),  # silently reflect
    ({"edge_mode": "skip"}, "edge_mode"),
    ({"amp": "fp8"}, "amp"),  # silently fp16
    ({"volume": "2d"}, "volume"),  # not enough values to unpack
    ({"volume": "list"}, "volume"),
])
def test_predict_volume_refuses_a_bad_argument_naming_it(tiny, change, name):
    model, _ = load_model(tiny.ckpt)
    kwargs = {"volume": tiny.vol, "window": 3, "batch_size": 4, **change}
    if isinstance(kwargs["volume"], str):
        kwargs["volume"] = {"2d": tiny.vol[0], "list": tiny.vol.tolist()}[kwargs["volume"]]
    with pytest.raises(ValueError, match=rf"^{name}: must be "):
        predict_volume(model, **kwargs)


def test_segment_checks_its_arguments_as_predict_volume(tiny):
    model, cfg = load_model(tiny.ckpt)
    with pytest.raises(ValueError, match=r"^batch_size: must be an int >= 1, got 0$"):
        segment(model, cfg, tiny.vol, batch_size=0, device="cpu")
    with pytest.raises(ValueError, match=r"^edge_mode: must be one of reflect, replicate, got 'wrap'$"):
        segment(model, cfg, tiny.vol, batch_size=2, device="cpu", edge_mode="wrap")


def test_evaluate_and_predict_tomogram_name_their_python_parameters(tiny):
    """The CLI's --batch-size and --edge never reach these checks wrong (click refuses them first):
    a Python caller is told the parameter, not a flag it has not got."""
    with pytest.raises(ValueError, match=r"^batch_size: must be an int >= 1, got 0$"):
        evaluate_checkpoint(tiny.ckpt, tiny.ds, batch_size=0, device="cpu")
    src = tiny.tmp / "t.npy"
    np.save(src, tiny.vol)
    with pytest.raises(ValueError, match=r"^batch_size: must be an int >= 1, got 0$"):
        predict_tomogram(tiny.ckpt, src, tiny.tmp / "o.npy", batch_size=0, device="cpu")
    with pytest.raises(ValueError, match=r"^edge_mode: must be None, reflect or replicate, got 'zeros'$"):
        predict_tomogram(tiny.ckpt, src, tiny.tmp / "o.npy", edge_mode="zeros", device="cpu")
    assert not (tiny.tmp / "o.npy").exists()


def test_factory_source_refuses_an_unknown_axes_value(tiny):
    """axes="second" read as "first" (evaluate_checkpoint refused it)."""
    assert len(FactorySource(tiny.ds, n_classes=4, axes="first")) == 2
    with pytest.raises(ValueError, match=r"^axes: must be 'all' or 'first', got 'second'$"):
        FactorySource(tiny.ds, n_classes=4, axes="second")
    with pytest.raises(ValueError, match=r"^axes: "):
        FactorySource(Path(tiny.tmp) / "missing", n_classes=4, axes="second")  # checked before the path


def test_predict_volume_refuses_a_model_on_another_device(tiny):
    """load_model's model on one device and device= another failed inside the first convolution
    (torch's type-mismatch error); the Python API says which is where, before any work."""
    model, cfg = load_model(tiny.ckpt, device="cpu")
    model.to("meta")  # stands for "weights on a GPU" on a machine without one
    with pytest.raises(ValueError, match=r"^device: the model's weights are on meta, the volume was to go to cpu"):
        predict_volume(model, tiny.vol, window=cfg.data.window, device="cpu")
    with pytest.raises(ValueError, match=r"^device: the model's weights are on meta"):
        segment(model, cfg, tiny.vol, batch_size=2, device=CPU)
