"""Assemble the training stream from a :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from simaq_factory.errors import BadInput
from simaq_train.config import TrainConfig
from simaq_train.data.sources import (
    IGNORE,
    FactorySource,
    RealSource,
    SliceIndex,
    class_names,
    dataset_hash,
    infer_n_classes,
)

log = logging.getLogger(__name__)


def resolve_classes(cfg: TrainConfig) -> TrainConfig:
    """``model.out_channels: 0`` → the number of classes of the (first) training dataset's card;
    every training dataset must agree."""
    if not cfg.data.train:
        raise BadInput("data.train", "no training dataset given")
    if cfg.model.out_channels != 0:
        return cfg
    counts = {p: infer_n_classes(p) for p in cfg.data.train}
    if len(set(counts.values())) != 1:
        raise BadInput("data.train", f"datasets disagree on the number of classes {counts}; "
                                     "set model.out_channels")
    n = counts[cfg.data.train[0]]
    if not 2 <= n <= IGNORE:
        raise BadInput("data.train", f"the dataset card gives {n} classes (expected 2 to {IGNORE}); "
                                     "set model.out_channels")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, out_channels=n))


def check_distinct(paths: Sequence[str], key: str) -> None:
    """BadInput naming ``key`` when two of ``paths`` are one dataset (the same real path): listed
    twice, every window of it would be used twice per epoch (training) or counted twice in the
    score (validation)."""
    seen: dict[str, str] = {}
    for p in paths:
        real = os.path.realpath(p)
        if real in seen:
            same = "" if seen[real] == p else f" (as {seen[real]})"
            raise BadInput(key, f"{p} is listed twice{same}; list each dataset once")
        seen[real] = p


def check_fov(src: FactorySource, key: str, fov_margin: float) -> None:
    """BadInput naming ``key`` unless every in-plane shape of ``src`` leaves a field of view inside
    ``fov_margin``."""
    for shape_yx in sorted(src.inplane_shapes()):
        if min(shape_yx) / 2.0 - fov_margin <= 0:
            raise BadInput(key, f"{src.path}: field-of-view margin {fov_margin} leaves no field of "
                                f"view in slices of {shape_yx}")


def check_window_reach(cfg: TrainConfig) -> None:
    """BadInput naming ``data.window`` when the window is deeper than the encoder can see.

    The encoder never pools the depth axis and each of its ``model.depth`` stages holds two 3-deep
    convolutions, so the centre slice's logits depend on the ±2·depth slices around it alone (the
    decoder reads centre slices only). The outer slices of a deeper window would be read, augmented
    and convolved for nothing, while the config and checkpoint say the model uses them. Checked when
    a run starts, not in :func:`~simaq_train.config.validate`: that also reads the configs of
    existing checkpoints, which stay usable for evaluate and predict.
    """
    half, reach = cfg.data.window // 2, 2 * cfg.model.depth
    if half > reach:
        raise BadInput("data.window", f"{cfg.data.window} slices (±{half}), but a model.depth {cfg.model.depth} "
                                      f"encoder sees only ±{reach} slices around the centre: the outer "
                                      f"{half - reach} on each side would have no effect; use data.window <= "
                                      f"{2 * reach + 1} or model.depth >= {-(-half // 2)}")


def check_source(src: FactorySource, key: str, *, fov_margin: float, divisor: int = 1) -> list[SliceIndex]:
    """The checks a dataset gets before a run starts, as bad input naming ``key``: in-plane shapes
    that are multiples of ``divisor`` and leave a field of view inside ``fov_margin``, labels that
    are class ids below ``src.n_classes`` or unlabelled. Returns the slice index."""
    for shape_yx in sorted(src.inplane_shapes()):
        if shape_yx[0] % divisor or shape_yx[1] % divisor:
            raise BadInput(key, f"{src.path}: in-plane shape {shape_yx} not divisible by "
                                f"2**(model.depth-1)={divisor} (or set data.crop, a multiple of it, "
                                "to train on crops)")
    check_fov(src, key, fov_margin)
    try:
        return src.index()
    except BadInput as err:
        raise BadInput(key, str(err)) from None


def build_stream(cfg: TrainConfig, rank: int = 0, world: int = 1) -> tuple[Any, dict[str, Any]]:
    """The training stream and a description ``{"datasets": {path: hash}, "windows": n, ...}``.

    ``cfg`` must have been through :func:`resolve_classes`.
    """
    from simaq_train.data.stream import WindowStream

    d = cfg.data
    if not d.train:
        raise BadInput("data.train", "no training dataset given")
    check_distinct(d.train, "data.train")  # "every kept window exactly once" per epoch
    check_window_reach(cfg)
    n_classes = cfg.model.out_channels
    sources: list[Any] = [
        FactorySource(p, n_classes=n_classes, fov_margin=d.fov_margin, axes=d.axes) for p in d.train
    ]
    shapes = set().union(*(s.inplane_shapes() for s in sources))
    if len(shapes) != 1:
        three_axis = d.axes == "all" and any(len(s.acqs) > 1 for s in sources)
        raise BadInput("data.train", f"training volumes differ in in-plane shape {sorted(shapes)} ("
                       + ("non-cubic three-axis data: set data.axes=first" if three_axis
                          else "train on datasets of one dataset.shape") + ")")
    shape_yx = shapes.pop()
    if d.crop > min(shape_yx):
        raise BadInput("data.crop", f"{d.crop} is larger than the slices {shape_yx}")
    # the network sees whole training slices only without data.crop; a crop is itself a multiple of
    # 2**(depth-1) (validate), and validation, evaluate and predict pad the slices they predict
    divisor = 1 if d.crop else 2 ** (cfg.model.depth - 1)
    indices = [check_source(s, "data.train", fov_margin=d.fov_margin, divisor=divisor) for s in sources]
    real_source = None
    if d.real.pairs or d.real.dirs:
        real = RealSource([tuple(p) for p in d.real.pairs], list(d.real.dirs), n_classes=n_classes,
                          class_names=class_names(sources[0].card, n_classes), fov_margin=d.fov_margin,
                          slicer_convention=d.real.slicer_convention, shape_yx=shape_yx,
                          tilt_axis=d.real.tilt_axis, beam_axis=d.real.beam_axis)
        if len(real) == 0:
            raise BadInput("data.real", "no annotated real tomogram found")
        real_source = len(sources)
        sources.append(real)
        indices.append(real.index())
    stream = WindowStream(sources, indices, cfg, real_source=real_source, rank=rank, world=world)
    if len(stream.table) == 0:
        raise BadInput("data.train", "no labelled window in the training data")
    if real_source is not None and not np.any(stream.table[:, 0] == real_source):
        # e.g. annotations only within window // 2 slices of the ends with data.edge_mode: skip
        raise BadInput("data.real", f"no window of the real tomograms is labelled at its centre slice "
                                    f"(data.edge_mode: {d.edge_mode}, data.window: {d.window}): real data would "
                                    "never be trained on")
    info = {
        "datasets": {str(p): dataset_hash(p) for p in d.train},
        "real_volumes": len(sources[real_source]) if real_source is not None else 0,
        "volumes": sum(len(s) for s in sources),
        "windows": int(len(stream.table)),
        "background_windows": int(stream.bg.sum()),
        "shape_yx": list(shape_yx),
        "class_names": class_names(sources[0].card, n_classes),
    }
    log.info("stream: %s", info)
    return stream, info
