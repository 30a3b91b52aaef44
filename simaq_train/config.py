"""Training configuration: frozen dataclasses loaded from YAML, with ``--set a.b=value`` overrides.

Unknown keys and wrongly typed values raise :class:`simaq_factory.errors.BadInput` naming the key.
Paths (datasets, real data, ``run.out``) are made absolute when loading, relative ones against the
current working directory, symbolic links resolved; a run records, and resumes on, those.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from simaq_factory.errors import BadInput
from simaq_factory.recipe.fields import unknown_key
from simaq_factory.yamlio import load_yaml
from simaq_train.data.sources import IGNORE
from simaq_train.losses import LossConfig
from simaq_train.model import ModelConfig


@dataclass(frozen=True)
class RealDataConfig:
    """Real tomograms with sparse annotations (reference §4.5–4.6).

    ``pairs``: list of ``[tomogram, annotation]`` paths (TIFF, MRC (``.mrc``, ``.rec``), NRRD or
    NPY). ``dirs``: folders scanned for ``NAME.{tif,tiff,mrc,rec,nrrd}`` with a sibling
    ``NAME.seg.nrrd`` (3D Slicer) or ``NAME.labels.{tif,tiff,mrc,nrrd}``. Annotation values: 255 = unlabelled, else class ids;
    ``.seg.nrrd`` files: 0 = unlabelled, segments mapped by name when every segment is named after
    a class, else Slicer value v → class v − 1 (the reference's convention); with
    ``slicer_convention: false`` their values are read like any other annotation file.
    ``ratio``: expected fraction of real windows per batch (each slot is real with this probability).
    ``tilt_axis`` / ``beam_axis``: how every real tomogram (and its annotation) is stored: the array
    axis that is the tilt axis, and the one the beam travelled along at 0° tilt (None: the
    lower-numbered other one); they are transposed so the tilt axis comes first and the 0° beam
    runs along the rows, as in the synthetic data (``predict --tilt-axis/--beam-axis``).
    """

    pairs: tuple[tuple[str, str], ...] = ()
    dirs: tuple[str, ...] = ()
    ratio: float = 0.15
    slicer_convention: bool = True
    tilt_axis: int = 0
    beam_axis: int | None = None


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = ()
    val: tuple[str, ...] = ()
    val_max_samples: int = 8
    window: int = 7  # odd; fit refuses more than 4·model.depth + 1 (the encoder sees ±2·depth slices)
    crop: int = 0  # train on random in-plane crops of crop × crop pixels; 0 = whole slices
    edge_mode: str = "reflect"  # reflect | replicate | skip (skip: no window crosses the ends)
    background_drop: float = 0.98
    fov_margin: float = 5.0
    axes: str = "all"  # all | first: which acquisition axes of a three-axis dataset to use
    shuffle_volumes: int = 4  # volumes per shuffle block (locality of the volume cache)
    num_workers: int = 0
    drop_last: bool = False
    real: RealDataConfig = RealDataConfig()


@dataclass(frozen=True)
class AugmentConfig:
    """Per-window augmentations (reference §4.9; see :mod:`simaq_train.data.augment`)."""

    enable: bool = True
    flip: float = 0.5  # per in-plane axis
    # probability of a random 90/180/270° in-plane rotation (square slices). Off by default, as in
    # the reference: a rotation turns the missing-wedge direction away from the image rows.
    rot90: float = 0.0
    # one 2D displacement field per window (§1.11 recipe, pixel units): per-component RMS
    # α / (4·√(3π)·σ) px ≈ 1.0 px for the defaults
    elastic_prob: float = 0.3
    elastic_alpha: float = 120.0  # strength (torchvision / reference α); 0 = identity
    elastic_sigma: float = 10.0  # smoothing std of the field, pixels
    resized_crop_prob: float = 0.3
    resized_crop_scale_min: float = 0.7  # crop side = int(side · s), s ~ U(scale_min, 1)
    intensity: float = 0.3  # probability of each of brightness, contrast, noise (field of view only)
    contrast: float = 0.2  # (image − FOV mean) · U(1 − c, 1 + c) + FOV mean
    brightness: float = 0.1  # offset ~ U(−b, b)
    noise_std: float = 0.1  # Gaussian noise with σ ~ U(0, noise_std)
    blur_prob: float = 0.2  # 3×3 Gaussian per depth slice
    blur_sigma_range: tuple[float, float] = (0.1, 2.0)
    invert_prob: float = 0.0  # image = −image


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 16
    accumulate: int = 4
    clip: float = 1.0  # global L2 grad-norm clip; 0 disables
    ema_decay: float = 0.999  # 0 disables the EMA
    amp: str = "auto"  # auto (fp16 on CUDA, off on CPU) | off | fp16 | bf16
    epochs: int = 10
    max_steps: int = 0  # optimiser steps; 0 = no limit
    max_minutes: float = 0.0  # wall-clock limit; 0 = none


@dataclass(frozen=True)
class RunConfig:
    out: str = "runs/default"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads; 0 = torch default
    log_every: int = 10  # optimiser steps between metric lines
    checkpoint_every: int = 100  # optimiser steps between checkpoints (and at every epoch end)
    progress: bool = True


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    run: RunConfig = RunConfig()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise BadInput(key, f"expected a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
            value = [value] if isinstance(value, str) and args[-1] is Ellipsis else value
        if not isinstance(value, (list, tuple)):
            raise BadInput(key, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise BadInput(key, f"expected {len(args)} items, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise BadInput(key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInput(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadInput(key, f"expected a number, got {value!r}")
        if not math.isfinite(value):  # .inf trained NaN weights with exit 0, or crashed mid-run
            raise BadInput(key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise BadInput(key, f"expected a string, got {value!r}")
        return str(value)
    if isinstance(tp, types.UnionType):
        return value
    raise BadInput(key, f"unsupported type {tp}")


def from_dict(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise BadInput(dotted, unknown_key(str(key), names))
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _set(tree: dict[str, Any], dotted: str, raw: str, set_by: dict[str, str] | None = None) -> None:
    """Set ``dotted`` (``a.b.c``) in ``tree`` to the YAML value ``raw``. ``set_by`` maps the keys
    earlier ``--set`` flags set to those flags, so that a clash names the flag at fault."""
    flag = f"--set {dotted}={raw}"
    if not dotted:
        raise BadInput(flag, "empty key; expected key=value, e.g. optim.lr=0.001")
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise BadInput(flag, "empty part in the dotted key")
    try:
        value = load_yaml(raw)
    except yaml.YAMLError as err:
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BadInput(flag, f"not valid YAML ({why})") from None
    node = tree
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            section = ".".join(parts[: i + 1])
            earlier = (set_by or {}).get(section)
            if earlier is not None:
                raise BadInput(f"--set {earlier}", f"{section} is a section, not a value "
                               f"(--set {dotted} sets a key in it)")
            raise BadInput(flag, f"{section} is not a section")
    node[parts[-1]] = value
    if set_by is not None:
        set_by[dotted] = f"{dotted}={raw}"


def validate(cfg: TrainConfig) -> TrainConfig:
    d, o, a, lo = cfg.data, cfg.optim, cfg.augment, cfg.loss
    checks = [
        (0 <= cfg.seed < 2**63, "seed", "must be in [0, 2**63)"),
        (d.window >= 1 and d.window % 2 == 1, "data.window", "must be a positive odd number"),
        (d.edge_mode in ("reflect", "replicate", "skip"), "data.edge_mode", "reflect|replicate|skip"),
        (0.0 <= d.background_drop <= 1.0, "data.background_drop", "must be in [0, 1]"),
        (0.0 <= d.real.ratio < 1.0, "data.real.ratio", "must be in [0, 1)"),
        (d.axes in ("all", "first"), "data.axes", "all|first"),
        (d.shuffle_volumes >= 1, "data.shuffle_volumes", "must be >= 1"),
        (d.num_workers >= 0, "data.num_workers", "must be >= 0"),
        (d.val_max_samples >= 0, "data.val_max_samples", "must be >= 0 (0 = every sample)"),
        (0.0 <= a.flip <= 1.0, "augment.flip", "must be in [0, 1]"),
        (0.0 <= a.rot90 <= 1.0, "augment.rot90", "must be in [0, 1]"),
        (0.0 <= a.intensity <= 1.0, "augment.intensity", "must be in [0, 1]"),
        (0.0 <= a.contrast < 1.0, "augment.contrast", "must be in [0, 1)"),
        (a.brightness >= 0, "augment.brightness", "must be >= 0"),
        (a.noise_std >= 0, "augment.noise_std", "must be >= 0"),
        (0.0 <= a.elastic_prob <= 1.0, "augment.elastic_prob", "must be in [0, 1]"),
        (a.elastic_alpha >= 0, "augment.elastic_alpha", "must be >= 0"),
        (a.elastic_sigma > 0, "augment.elastic_sigma", "must be > 0"),
        (0.0 <= a.resized_crop_prob <= 1.0, "augment.resized_crop_prob", "must be in [0, 1]"),
        (0.0 < a.resized_crop_scale_min <= 1.0, "augment.resized_crop_scale_min", "must be in (0, 1]"),
        (0.0 <= a.blur_prob <= 1.0, "augment.blur_prob", "must be in [0, 1]"),
        (0.0 < a.blur_sigma_range[0] <= a.blur_sigma_range[1], "augment.blur_sigma_range",
         "must be [low, high] with 0 < low <= high"),
        (0.0 <= a.invert_prob <= 1.0, "augment.invert_prob", "must be in [0, 1]"),
        (lo.alpha >= 0, "loss.alpha", "must be >= 0"),
        (lo.gamma >= 0, "loss.gamma", "must be >= 0"),
        (lo.dice_weight >= 0, "loss.dice_weight", "must be >= 0"),
        (lo.dice_eps > 0, "loss.dice_eps", "must be > 0"),
        # the datasets and annotations mark unlabelled voxels (and those outside the FOV) with 255
        (lo.ignore_index == IGNORE, "loss.ignore_index",
         f"must be {IGNORE}, the unlabelled value of the training data"),
        (o.batch_size >= 1 and o.accumulate >= 1, "optim.batch_size", "batch_size, accumulate >= 1"),
        (o.amp in ("auto", "off", "fp16", "bf16"), "optim.amp", "auto|off|fp16|bf16"),
        (0.0 <= o.ema_decay < 1.0, "optim.ema_decay", "must be in [0, 1)"),
        (o.lr > 0, "optim.lr", "must be > 0"),
        (cfg.model.out_channels == 0 or 2 <= cfg.model.out_channels <= IGNORE, "model.out_channels",
         f"must be in [2, {IGNORE}], or 0 to take the number of classes from the dataset card"),
        (cfg.model.depth >= 1, "model.depth", "must be >= 1"),
        (cfg.model.init_features >= 1, "model.init_features", "must be >= 1"),
        (cfg.model.in_channels == 1, "model.in_channels", "must be 1 (one reconstruction channel)"),
        (o.epochs >= 0 and o.max_steps >= 0 and o.max_minutes >= 0, "optim.epochs",
         "epochs, max_steps and max_minutes must be >= 0"),
        (o.clip >= 0 and o.weight_decay >= 0, "optim.clip", "clip and weight_decay must be >= 0"),
        (cfg.run.threads >= 0, "run.threads", "must be >= 0 (0 = torch default)"),
        (cfg.run.log_every >= 1 and cfg.run.checkpoint_every >= 1, "run.log_every",
         "log_every and checkpoint_every must be >= 1"),
        (d.fov_margin >= 0, "data.fov_margin", "must be >= 0"),
        (d.crop >= 0 and d.crop % 2 ** (cfg.model.depth - 1) == 0, "data.crop",
         "must be 0 or a multiple of 2**(model.depth-1)"),
    ]
    for ok, key, msg in checks:
        if not ok:
            raise BadInput(key, msg)
    from simaq_train.data.volumes import frame_permutation

    frame_permutation(d.real.tilt_axis, d.real.beam_axis, "data.real.tilt_axis", "data.real.beam_axis")
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load YAML (or defaults when ``path`` is None) and apply ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise BadInput(str(p), "is a directory, not a config file (e.g. configs/train-cpu.yaml)")
        if not p.is_file():
            raise BadInput(str(p), "config file not found")
        try:
            tree = load_yaml(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise BadInput(str(p), f"not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise BadInput(str(p), "expected a mapping at top level")
    set_by: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise BadInput(f"--set {item}", "expected key=value")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), raw, set_by)
    return validate(from_dict(TrainConfig, absolute_paths(from_dict(TrainConfig, tree).to_dict())))


def absolute_paths(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of a full config dict (``TrainConfig.to_dict()``, or a checkpoint's ``config``) with
    ``data.train``, ``data.val``, ``data.real.pairs``, ``data.real.dirs`` and ``run.out`` absolute
    (relative to the current working directory) and free of symbolic links."""
    out = copy.deepcopy(tree)
    data, real = out["data"], out["data"]["real"]
    data["train"] = [os.path.realpath(p) for p in data["train"]]
    data["val"] = [os.path.realpath(p) for p in data["val"]]
    real["pairs"] = [[os.path.realpath(p) for p in pair] for pair in real["pairs"]]
    real["dirs"] = [os.path.realpath(p) for p in real["dirs"]]
    out["run"]["out"] = os.path.realpath(out["run"]["out"])
    return out


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    return validate(from_dict(TrainConfig, data))
