"""Inference: sliding window along the tilt axis, batched, and per-class post-processing.

``predict_volume`` takes an already normalised (Z, H, W) volume and returns (Z, H, W) uint8 class
ids: window ``k`` covers slices ``k - h … k + h`` with the ends reflect- or replicate-padded (no
slice is left empty; fixes reference §8.3 bug 21); the in-plane size is zero-padded up to a multiple
of the model's divisor (outside the field of view the normalised input is 0 anyway) and cropped back.
``segment`` adds the field of view and post-processing (what ``predict`` writes and ``evaluate
--postprocess`` scores); ``predict_tomogram`` adds reading and the training normalisation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from simaq_factory.errors import BadInput
from simaq_train.config import TrainConfig, config_from_dict
from simaq_train.data.normalize import fov_mask, normalize_finite
from simaq_train.data.stream import window_indices
from simaq_train.data.volumes import check_output_path, frame_permutation, read_volume_meta, write_volume
from simaq_train.engine.parts import amp_dtype, load_checkpoint, resolve_device
from simaq_train.model import CenterSliceUNet

log = logging.getLogger(__name__)

Progress = Callable[[str, "float | None"], None]  # (what is being done, fraction done or None)
Device = str | torch.device  # "auto" | "cpu" | "cuda" | "cuda:N", or a torch.device of one of them

#: what ``predict_volume``'s ``edge_mode`` and ``amp`` take (``amp`` as the config's ``optim.amp``)
EDGE_MODES = ("reflect", "replicate")
AMP_MODES = ("auto", "off", "fp16", "bf16")


def load_model(ckpt_path: str | Path, use_ema: bool = True,
               device: Device = "cpu") -> tuple[CenterSliceUNet, TrainConfig]:
    """The (EMA, when present and requested) model of a checkpoint in eval mode, and its config,
    whose ``optim.amp`` is the precision the weights were trained in when the checkpoint records it.

    ``device`` (here and in every function of this module): ``"auto"``, ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or a ``torch.device``, resolved as the ``--device`` flag is (``auto``: CUDA when
    there is one); anything else, or CUDA where there is none, is a ``ValueError`` (``BadInput``)
    naming ``device``."""
    dev = resolve_device(device, "device")  # before the checkpoint is read
    return model_from_checkpoint(load_checkpoint(ckpt_path), ckpt_path, use_ema, dev)


def model_from_checkpoint(ckpt: dict[str, Any], ckpt_path: str | Path, use_ema: bool = True,
                          device: Device = "cpu") -> tuple[CenterSliceUNet, TrainConfig]:
    """:func:`load_model` of a checkpoint already read with ``load_checkpoint``."""
    device = resolve_device(device, "device")
    try:
        cfg = config_from_dict(ckpt["config"])
        if ckpt.get("trained_amp") in ("off", "fp16", "bf16"):
            cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, amp=ckpt["trained_amp"]))
        model = CenterSliceUNet(cfg.model)
        state = ckpt["ema"] if (use_ema and ckpt.get("ema") is not None) else ckpt["model"]
        model.load_state_dict(state, strict=True)
    except BadInput as err:  # the config's own error names its key
        raise BadInput(str(ckpt_path), f"its config is invalid: {err}") from None
    except (KeyError, RuntimeError, ValueError) as err:
        what = " ".join(str(err).split())  # load_state_dict's message spans lines: one, shortened
        what = f"{type(err).__name__}: {what[:160]}{'…' if len(what) > 160 else ''}"
        raise BadInput(str(ckpt_path), f"checkpoint does not match its model ({what})") from None
    return model.to(device).eval(), cfg


_FORWARD_OVERHEAD = 256 << 20  # the input window batch, the padded volume's index, the allocator's slack
_said_batch: set[tuple[int, int]] = set()


def forward_bytes(model: CenterSliceUNet, window: int, height: int, width: int, batch_size: int) -> int:
    """Host bytes an inference forward pass of ``batch_size`` windows holds at its peak, estimated:
    without autograd each layer's output is freed once the next has read it, so about three of the
    largest leaf-module output live at once (input, output and a normalisation's or activation's
    result), found by a forward pass on the ``meta`` device (shapes, no arithmetic), plus the
    weights and 256 MiB: an upper bound. Measured on CPU (peak RSS over the loaded model): 0.37 GiB
    for 16 features, depth 4, 4 windows of 7 × 256² (0.58 GiB estimated); 0.42 GiB for 32 features,
    depth 5, 2 windows (0.64); the paper's model (64, 5) on 8 windows of 7 × 512²: 11 GiB estimated."""
    with torch.device("meta"):
        ghost = CenterSliceUNet(model.cfg).eval()
    largest = 0

    def see(_mod: torch.nn.Module, _inp: Any, out: Any) -> None:
        nonlocal largest
        largest = max(largest, out.numel() if isinstance(out, torch.Tensor) else 0)

    hooks = [m.register_forward_hook(see) for m in ghost.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            ghost(torch.empty(1, 1, window, height, width, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    weights = sum(p.numel() for p in model.parameters()) * 4
    return 3 * 4 * largest * batch_size + weights + _FORWARD_OVERHEAD


def cpu_batch_size(model: CenterSliceUNet, window: int, height: int, width: int, batch_size: int) -> int:
    """``batch_size``, or the most windows a CPU forward pass fits into 70 % of the memory still
    available (cgroup limits included; the result does not depend on it), at least 1, with a
    warning once: the paper's model on 512² slices needs ~11 GiB at the default 8 and was killed
    by the kernel on smaller machines, without a word."""
    from simaq_train.bench import host_memory_available

    if not isinstance(model, CenterSliceUNet):  # another network (a test's stub): its needs are unknown
        return batch_size
    avail = host_memory_available()
    if avail is None or forward_bytes(model, window, height, width, batch_size) <= 0.7 * avail:
        return batch_size
    one = forward_bytes(model, window, height, width, 1)
    per = max(1, forward_bytes(model, window, height, width, 2) - one)
    fit = max(1, min(batch_size, 1 + int((0.7 * avail - one) // per)))
    if (batch_size, fit) not in _said_batch:
        _said_batch.add((batch_size, fit))
        log.warning("--batch-size %d: a CPU forward pass of %d windows of %d × %d × %d needs about %.1f GiB, "
                    "%.1f GiB are available: predicting %d slice(s) at a time (the same result)%s",
                    batch_size, batch_size, window, height, width,
                    forward_bytes(model, window, height, width, batch_size) / 2**30, avail / 2**30, fit,
                    "; even one may not fit" if one > 0.7 * avail else "")
    return fit


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_predict_args(volume: Any, window: Any, batch_size: Any, edge_mode: Any, amp: Any) -> None:
    """``predict_volume``'s arguments, each refused with a ``BadInput`` (a ``ValueError``) naming it:
    a wrong one otherwise ran (an even window took one slice more, an unknown ``edge_mode`` was
    ``reflect``, an unknown ``amp`` fp16) or failed deep inside torch."""
    shape = getattr(volume, "shape", None)
    if shape is None or len(shape) != 3:
        got = f"shape {tuple(shape)}" if shape is not None else type(volume).__name__
        raise BadInput("volume", f"must be a (Z, H, W) array, got {got}")
    if not _is_int(window) or window < 1 or window % 2 == 0:
        raise BadInput("window", f"must be a positive odd number (the model's data.window), got {window!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise BadInput("batch_size", f"must be an int >= 1, got {batch_size!r}")
    if edge_mode not in EDGE_MODES:
        raise BadInput("edge_mode", f"must be one of {', '.join(EDGE_MODES)}, got {edge_mode!r}")
    if amp not in AMP_MODES:
        raise BadInput("amp", f"must be one of {', '.join(AMP_MODES)}, got {amp!r}")


@torch.no_grad()
def predict_volume(model: CenterSliceUNet, volume: np.ndarray, *, window: int, edge_mode: str = "reflect",
                   batch_size: int = 8, device: Device = "cpu",
                   amp: str = "auto", progress: Progress | None = None) -> np.ndarray:
    """volume: normalised float32 (Z, H, W) → uint8 (Z, H, W) argmax class ids. ``progress`` is
    told ``("slice i/Z", i / Z)`` after each batch.

    ``window``: the odd window depth the model was trained with (``cfg.data.window``; another one
    runs but gives predictions the model was not trained for: :func:`segment` takes it from the
    config); ``edge_mode``: ``reflect`` or ``replicate``; ``batch_size`` >= 1; ``amp``: ``auto``,
    ``off``, ``fp16`` or ``bf16``; ``device`` as in :func:`load_model`. A wrong one is a
    ``ValueError`` naming it, before any work."""
    check_predict_args(volume, window, batch_size, edge_mode, amp)
    device = resolve_device(device, "device")
    weights = next(iter(model.parameters()), None)
    if weights is not None and weights.device != device:  # torch's own error came from inside a convolution
        raise ValueError(f"device: the model's weights are on {weights.device}, the volume was to go to {device}; "
                         f"load the model there (load_model(..., device='{device}')) or move it (model.to(device))")
    z, h, w = volume.shape
    div = model.divisor
    ph, pw = (-h) % div, (-w) % div
    vol = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))
    if ph or pw:
        vol = F.pad(vol, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    vol = vol.to(device)
    out = np.zeros((z, h, w), dtype=np.uint8)
    if device.type == "cpu":
        batch_size = cpu_batch_size(model, window, h + ph, w + pw, batch_size)
    dtype = amp_dtype(amp, device)
    was_training = model.training
    model.eval()
    for start in range(0, z, batch_size):
        ks = range(start, min(z, start + batch_size))
        idx = torch.from_numpy(np.stack([window_indices(k, z, window, edge_mode) for k in ks])).to(device)
        x = vol[idx].unsqueeze(1)  # (b, 1, window, H', W')
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        pred = logits.argmax(1)[:, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w]
        out[start : start + len(ks)] = pred.to(torch.uint8).cpu().numpy()
        if progress is not None:
            progress(f"slice {start + len(ks)}/{z}", (start + len(ks)) / z)
    model.train(was_training)
    return out


@dataclass(frozen=True)
class PostClass:
    """Post-processing of one class mask (reference §7.2): the mask is ``seg ∈ members``."""

    value: int
    members: tuple[int, ...]
    sigma: float  # Gaussian σ in voxels at 512³ (scaled with the volume)
    min_radius: float  # components smaller than a ball of this radius (voxels at 512³) are removed


DEFAULT_POST = (
    PostClass(1, (1, 2, 3), 5.0, 70.0),
    PostClass(2, (2, 3), 5.0, 3.0),
    PostClass(3, (3,), 1.0, 2.0),
)


def post_classes(n_classes: int) -> tuple[PostClass, ...]:
    """The reference's per-class settings for classes 1–3; the cell mask also contains every
    further class (e.g. 4 nucleus), and each further class is kept as predicted (no smoothing or
    size filter), written after the cell and before vacuoles and droplets."""
    extra = tuple(range(4, n_classes))
    cell, vacuole, droplet = DEFAULT_POST
    cell = PostClass(1, cell.members + extra, cell.sigma, cell.min_radius)
    known = [c for c in (cell, vacuole, droplet) if c.value < n_classes]
    return (known[0],) + tuple(PostClass(c, (c,), 0.0, 0.0) for c in extra) + tuple(known[1:])


def postprocess(seg: np.ndarray, classes: tuple[PostClass, ...] = DEFAULT_POST,
                scale: float | None = None) -> np.ndarray:
    """Per class (in order, later classes overwrite): Gaussian smoothing of the mask (threshold 0.5),
    3D hole filling, removal of 18-connected components smaller than 4/3·π·r³. σ and r are the
    reference's 512³ values times ``scale`` (default ``max(seg.shape) / 512``). uint8 in and out.

    Beyond the reference: every class after the first (the cell, whose mask holds the classes inside
    it) is kept only inside the first class's final mask, so a cell removed as too small takes its
    vacuoles and droplets with it (the reference, filtering each class on its own, left them behind
    with no cell around them)."""
    from scipy import ndimage

    s = max(seg.shape) / 512.0 if scale is None else scale
    out = np.zeros_like(seg, dtype=np.uint8)
    structure = ndimage.generate_binary_structure(3, 2)
    container: np.ndarray | None = None  # the first class's final mask: the cells
    for pc in classes:
        mask = np.isin(seg, pc.members)
        sigma = pc.sigma * s
        if sigma > 0:
            mask = ndimage.gaussian_filter(mask.astype(np.float32), sigma, mode="reflect", truncate=4.0) > 0.5
        mask = ndimage.binary_fill_holes(mask)
        min_vol = 4.0 / 3.0 * np.pi * (pc.min_radius * s) ** 3
        lab, n = ndimage.label(mask, structure=structure)
        if n and min_vol > 1:
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            keep = sizes >= min_vol
            keep[0] = False
            mask = keep[lab]
        if container is None:
            container = mask
        else:
            mask &= container
        out[mask] = pc.value
    return out


def model_edge_mode(cfg: TrainConfig) -> str:
    """The end padding the model was trained with (``skip`` trained no end windows: reflect)."""
    return "replicate" if cfg.data.edge_mode == "replicate" else "reflect"


def segment(model: CenterSliceUNet, cfg: TrainConfig, volume: np.ndarray, *, batch_size: int,
            device: Device, edge_mode: str | None = None, post: bool = False,
            post_scale: float | None = None, progress: Progress | None = None) -> np.ndarray:
    """The segmentation ``predict`` writes, of a normalised (Z, H, W) volume in the model's frame:
    sliding-window prediction (ends padded as in training unless ``edge_mode`` says otherwise),
    background outside the field-of-view cylinder (the model never saw it), then post-processing.
    ``evaluate --postprocess`` scores exactly this. Arguments are checked as in :func:`predict_volume`."""
    seg = predict_volume(model, volume, window=cfg.data.window,
                         edge_mode=edge_mode or model_edge_mode(cfg), batch_size=batch_size,
                         device=device, amp=cfg.optim.amp, progress=progress)
    seg[:, ~fov_mask(seg.shape[1:], cfg.data.fov_margin)] = 0
    return _postprocess_step(seg, cfg, post_scale, progress) if post else seg


def _postprocess_step(seg: np.ndarray, cfg: TrainConfig, post_scale: float | None,
                      progress: Progress | None) -> np.ndarray:
    """:func:`segment`'s post-processing (told to ``progress``), the classes from the model's config."""
    if progress is not None:
        progress("post-processing", None)
    return postprocess(seg, post_classes(cfg.model.out_channels), scale=post_scale)


def predict_tomogram(ckpt: str | Path, tomogram: str | Path, out: str | Path, *, use_ema: bool = True,
                     batch_size: int = 8, edge_mode: str | None = None, post: bool = True,
                     post_scale: float | None = None, tilt_axis: int = 0, beam_axis: int | None = None,
                     normalize: bool = True, device: Device = "auto", overwrite: bool = False,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Read, normalise (training recipe), predict, post-process and write a uint8 label volume.
    ``progress(text, fraction or None)`` is told each step once the input has passed its checks
    (each batch of slices, post-processing, writing): a 1024² tomogram takes minutes on a CPU.

    ``edge_mode``: padding of the windows at the first and last slices; default: as the model was
    trained (its ``data.edge_mode``). ``normalize=False`` takes the input as already normalised
    (the training's rank-to-normal mapping inside the field of view); outside the field of view
    it is set to 0, as the model saw in training.

    ``tilt_axis``: the tomogram's axis (0, 1 or 2 of the array as stored) that is the tilt axis.
    ``beam_axis``: the axis the beam travelled along at 0° tilt (default: the lower-numbered of the
    two others). The network sees the volume as the training data was stored — tilt axis first,
    0° beam along the rows of each slice, so that the missing wedge lies as in training — via
    ``numpy.transpose(volume, (tilt_axis, beam_axis, remaining axis))``. Singleton axes of the input
    are dropped (it must be 3D after that); the output has the shape and orientation of what
    remains. Voxels outside the field-of-view cylinder (where the normalised input is 0 and training
    labels were ignored) are background. Nothing is written unless every step succeeds.

    ``out`` must not exist, unless ``overwrite``: then an existing file is replaced, and an existing
    ``.zarr`` only when it is an array predict wrote; the input itself is never replaced. With
    ``normalize``, non-finite voxels (NaN, ±inf: e.g. masked regions of a reconstruction) are left out
    of the normalisation statistics and set to 0 (the median of the normalised intensities), with a
    warning that counts them; a volume without a finite voxel in the field of view is refused.
    """
    out = check_output_path(out, overwrite=overwrite, source=tomogram)
    # the CLI's --edge and --batch-size never get here wrong (click checks them): the parameters are named
    if edge_mode is not None and edge_mode not in EDGE_MODES:
        raise BadInput("edge_mode", f"must be None, {' or '.join(EDGE_MODES)}, got {edge_mode!r}")
    perm = frame_permutation(tilt_axis, beam_axis)
    inverse = tuple(int(i) for i in np.argsort(perm))
    if not _is_int(batch_size) or batch_size < 1:
        raise BadInput("batch_size", f"must be an int >= 1, got {batch_size!r}")
    if post_scale is not None and not (post_scale > 0 and np.isfinite(post_scale)):
        raise BadInput("--post-scale", f"must be > 0 and finite, got {post_scale}")
    dev = resolve_device(device, "--device")
    ck = load_checkpoint(ckpt)
    model, cfg = model_from_checkpoint(ck, ckpt, use_ema, dev)
    names = ck.get("class_names")
    vol = read_volume_meta(tomogram)
    raw = np.transpose(vol.data, perm)
    if raw.size == 0:
        raise BadInput(str(tomogram), f"empty volume (shape {vol.data.shape})")
    if min(raw.shape[1:]) / 2.0 - cfg.data.fov_margin <= 0:
        raise BadInput(str(tomogram), f"in-plane shape {raw.shape[1:]} too small for the field of view")
    h, w = raw.shape[1:]
    _warn_if_short_of_memory(str(tomogram), raw, normalize, post)
    if max(h, w) > 1.25 * min(h, w):  # a slab: the disc of its short side is all that is segmented
        outside = 1.0 - float(fov_mask((h, w), cfg.data.fov_margin).mean())
        log.warning("%s: slices of %d x %d voxels (Y x X about the tilt axis): only the disc of radius %.0f in "
                    "their middle is segmented, %.0f %% of the volume outside it is labelled background "
                    "(--tilt-axis / --beam-axis say how the volume lies)", tomogram, h, w,
                    min(h, w) / 2.0 - cfg.data.fov_margin, 100 * outside)
    if normalize:
        log.info("%s: normalising %s voxels", tomogram, "x".join(map(str, raw.shape)))
        norm, _ = normalize_finite(raw, cfg.data.fov_margin, str(tomogram))
    else:
        if not np.isfinite(raw).all():
            raise BadInput(str(tomogram), "holds NaN or infinite values (--no-normalize takes a normalised volume)")
        big = float(np.abs(raw).max(initial=0)) if raw.dtype.kind == "f" else 0.0
        if big > float(np.finfo(np.float32).max):
            raise BadInput(str(tomogram), f"values beyond float32's range (largest |value| {big:.3g}); "
                           "--no-normalize takes a normalised volume")
        norm = np.array(raw, dtype=np.float32)
        disc = fov_mask(norm.shape[1:], cfg.data.fov_margin)
        _warn_if_not_normalised(norm[:, disc], str(tomogram))
        norm[:, ~disc] = 0
    seg = segment(model, cfg, norm, batch_size=batch_size, device=dev, edge_mode=edge_mode,
                  post=False, progress=progress)
    # the input's voxels are not needed any more (the writer reads only its header and shape):
    # post-processing's ~20 bytes a voxel no longer come on top of them
    del norm, raw
    vol.data = np.broadcast_to(np.zeros((), vol.data.dtype), vol.data.shape)
    if post:
        seg = _postprocess_step(seg, cfg, post_scale, progress)
    seg = np.ascontiguousarray(np.transpose(seg, inverse))
    counts = np.bincount(seg.ravel(), minlength=cfg.model.out_channels)
    if not (isinstance(names, list) and len(names) == len(counts)):
        names = [f"class {k}" for k in range(len(counts))]
    if progress is not None:
        progress("writing", None)
    write_volume(out, seg, vol.voxel_size, overwrite=overwrite, source=tomogram, class_names=names, like=vol)
    return {"output": str(out), "shape": list(seg.shape), "voxels_per_class": counts.tolist(),
            "class_names": [str(n) for n in names]}


# bytes a voxel predict needs beyond the input it has read, at its peak (measured, 48 x 512² on
# cpu2, RSS: normalising a float32 volume ~35, uint8 ~10; post-processing ~30 with the input
# freed), with a margin; the network's forward pass comes on top (cpu_batch_size bounds it)
_PEAK_BYTES_PER_VOXEL = {"normalise": 40, "post": 32, "predict": 8}


def _warn_if_short_of_memory(name: str, raw: np.ndarray, normalize: bool, post: bool) -> None:
    """Say before minutes of work, not after them, when the tomogram looks too large for the memory
    left: the kernel ends the process without a word of ours ('Killed')."""
    from simaq_train.bench import host_memory_available

    avail = host_memory_available()
    if avail is None:
        return
    small = raw.dtype.itemsize <= 2 and raw.dtype.kind in "iuf"  # counted, not sorted (normalize.py)
    per = max((12 if small else _PEAK_BYTES_PER_VOXEL["normalise"]) if normalize else 0,
              _PEAK_BYTES_PER_VOXEL["post"] if post else 0, _PEAK_BYTES_PER_VOXEL["predict"])
    need = raw.size * per
    if need > avail:
        log.warning("%s: %s voxels need about %.1f GiB of memory to %s (about %d bytes a voxel), "
                    "%.1f GiB are available: the process may be killed; crop the tomogram (or use "
                    "a machine with more memory)", name, "x".join(map(str, raw.shape)), need / 2**30,
                    "normalise, predict and post-process" if post else "normalise and predict",
                    per, avail / 2**30)


def _warn_if_not_normalised(inside: np.ndarray, name: str) -> None:
    """--no-normalize takes what the reader's normalisation gives (standard-normal quantiles in the
    field of view, ``inside``: mean 0, standard deviation 1); a raw reconstruction passed by mistake
    (0-255, LAC units) would be segmented without a word, so say what it looks like."""
    if not inside.size:
        return
    mean, std = float(inside.mean(dtype=np.float64)), float(inside.std(dtype=np.float64))
    if abs(mean) > 1.0 or not 0.25 <= std <= 4.0:
        log.warning("%s: --no-normalize, but the field of view has mean %.3g and standard deviation %.3g "
                    "where the model expects about 0 and 1 (normalised volumes); leave out --no-normalize "
                    "for a raw reconstruction", name, mean, std)
