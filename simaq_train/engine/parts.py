"""Optimiser groups (reference §6.2, bug 3 fixed), EMA with BatchNorm statistics (§6.4, bug 2
fixed), device/AMP selection and atomic checkpoints."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simaq_factory.errors import BadInput
from simaq_train.config import OptimConfig

NO_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.PReLU)
CHECKPOINT_FORMAT = "simaq-train checkpoint"
CHECKPOINT_VERSION = 1


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups selected by module type: conv/linear weights decay; norms, PReLU and biases don't."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, NO_DECAY_TYPES) or name == "bias":
                no_decay.append(p)
            else:
                decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam with coupled L2 weight decay on the decay group only (reference §6.2)."""
    return torch.optim.Adam(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


class EMA:
    """Exponential moving average of the parameters; buffers (BatchNorm running statistics) are
    copied from the live model at every update. Call :meth:`update` once per optimiser step.

    The decay used at update ``n`` (0-based) is ``min(decay, (1 + n) / (10 + n))``: the usual
    warm-up, so that a short run's EMA is not stuck near the initial weights (the reference used a
    flat 0.999 per micro-batch).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def decay_at(self, n: int) -> float:
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module, n: int) -> None:
        w = 1.0 - self.decay_at(n)
        # multi-tensor kernels (as torch.optim uses): a few launches on a GPU, not two per tensor
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], w)
        torch._foreach_copy_(list(self.model.buffers()), list(model.buffers()))


def resolve_device(name: str | torch.device, key: str = "run.device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, or a ``torch.device`` of one of them (checked the
    same way: the Python API takes either); anything else, CUDA where there is none or an index
    beyond the visible GPUs is bad input naming ``key`` (the config key, flag or parameter the name
    came from), worded as every simaq-factory command words it."""
    from simaq_factory.device import resolve_device as resolve

    if isinstance(name, torch.device):  # torch.device("cpu", 0) prints as "cpu:0", refused as a name
        name = "cpu" if name.type == "cpu" else str(name)
    return resolve(name, key)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full precision: ``auto`` is fp16 on CUDA and off on CPU; ``bf16``
    runs on either device (CPU autocast is bfloat16); ``fp16`` on a CPU falls back to full
    precision with a warning (CPU autocast has no float16 path here)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        logging.getLogger(__name__).warning("amp fp16 is for CUDA: this CPU run uses float32 (bf16 autocast "
                                            "runs on CPU)")
        return None
    return torch.float16


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically: a killed run leaves either the old or the new checkpoint, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, tmp)
    os.replace(tmp, path)


def _unreadable(p: Path, err: Exception) -> str:
    """Why torch could not load the file at ``p``, in words (torch's own are a KeyError of one byte
    for a text file, or a page about miniz for a cut one)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    with open(p, "rb") as f:
        head = f.read(4)
    if not head:
        return "empty file"
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        return "not a file torch.save wrote"
    if "zip archive" in text or "central directory" in text:
        return "truncated or damaged: its zip archive cannot be read"
    if "Weights only load failed" in text:
        return "it holds Python objects beyond tensors and plain containers, refused unrun"
    return f"{type(err).__name__}: {text[:200]}"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise BadInput(str(p), "checkpoint not found")
    try:  # weights_only: tensors and plain containers; a pickle that would run code is refused
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise BadInput(str(p), f"not a readable checkpoint ({_unreadable(p, err)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise BadInput(str(p), "not a simaq-train checkpoint")
    version = ckpt.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= CHECKPOINT_VERSION:
        raise BadInput(str(p), f"checkpoint format version {version!r}; this simaq-train reads versions "
                               f"1 to {CHECKPOINT_VERSION} (a newer simaq-train wrote it?)")
    return ckpt
