"""Step time and memory of one training micro-batch (forward, loss, backward, optimiser step)."""

from __future__ import annotations

import time
from typing import Any

import torch

from simaq_factory.errors import BadInput
from simaq_train.config import OptimConfig
from simaq_train.engine.parts import amp_dtype, make_optimizer, resolve_device
from simaq_train.losses import dice_focal_loss
from simaq_train.model import CenterSliceUNet, ModelConfig, count_parameters


def bench_train_step(*, features: int = 64, depth: int = 5, size: int = 512, window: int = 7,
                     batch_size: int = 16, steps: int = 10, amp: str = "auto",
                     device: str = "auto", warmup: int = 3) -> dict[str, Any]:
    """Mean seconds per step and peak device memory (CUDA) on random inputs and targets."""
    if size % 2 ** (depth - 1):
        raise BadInput("--size", f"must be a multiple of 2**(depth-1) = {2 ** (depth - 1)}")
    if window % 2 == 0:
        raise BadInput("--window", "must be odd (as data.window)")
    dev = resolve_device(device, "--device")
    model = CenterSliceUNet(ModelConfig(init_features=features, depth=depth)).to(dev).train()
    opt = make_optimizer(model, OptimConfig())
    dtype = amp_dtype(amp, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch_size, 1, window, size, size, generator=gen).to(dev)
    y = torch.randint(0, 4, (batch_size, size, size), generator=gen).to(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def step() -> None:
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        loss = dice_focal_loss(logits, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    sec = (time.perf_counter() - t0) / steps
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "parameters": count_parameters(model), "features": features, "depth": depth,
        "input": [batch_size, 1, window, size, size], "amp": str(dtype).replace("torch.", "") if dtype else "off",
        "seconds_per_step": sec, "samples_per_s": batch_size / sec,
        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
        "torch": torch.__version__,
    }
