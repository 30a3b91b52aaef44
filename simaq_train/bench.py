"""Step time and memory of one training micro-batch (forward, loss, backward, optimiser step)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from simaq_factory.errors import BadInput
from simaq_train.config import OptimConfig
from simaq_train.engine.parts import amp_dtype, make_optimizer, resolve_device
from simaq_train.losses import dice_focal_loss
from simaq_train.model import CenterSliceUNet, ModelConfig, count_parameters


def step_bytes(cfg: ModelConfig, *, window: int, size: int, batch_size: int) -> int:
    """Host bytes an fp32 training step of ``cfg`` holds at its peak, estimated: the outputs of every
    leaf module for one window (a forward pass on the ``meta`` device: shapes, no arithmetic) times
    ``batch_size`` and 1.25 (measured on CPU: 1.1 GiB and 2.4 GiB of peak RSS at 128² and 256²,
    16 features, depth 4, batch 4, against 0.37 and 1.47 GiB of outputs and ~0.5 GiB for torch itself),
    plus weights, gradients and Adam's two moments. Compared with :func:`host_memory_available`,
    which counts what the process (torch included) already holds as taken."""
    with torch.device("meta"):
        model = CenterSliceUNet(cfg).train()
    elems = 0

    def count(_mod: torch.nn.Module, _inp: Any, out: Any) -> None:
        nonlocal elems
        elems += out.numel() if isinstance(out, torch.Tensor) else 0

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        model(torch.empty(1, 1, window, size, size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return int(1.25 * 4 * elems * batch_size) + 16 * count_parameters(model)


def host_memory_available() -> int | None:
    """Bytes this process may still take: ``MemAvailable`` of /proc/meminfo, or less when a cgroup
    (a container, a SLURM job) limits memory (v2 ``memory.max`` − ``memory.current``); None where
    neither is known (not Linux)."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        avail = None
    try:
        with open("/proc/self/cgroup") as f:
            rel = next((ln.split(":", 2)[2].strip() for ln in f if ln.startswith("0::")), None)
        if rel is not None:
            base = Path("/sys/fs/cgroup") / rel.lstrip("/")
            limit = (base / "memory.max").read_text().strip()
            if limit != "max":
                left = int(limit) - int((base / "memory.current").read_text().strip())
                avail = left if avail is None else min(avail, left)
    except (OSError, ValueError, StopIteration):
        pass
    return avail


def bench_train_step(*, features: int = 64, depth: int = 5, size: int = 512, window: int = 7,
                     batch_size: int = 16, steps: int = 10, amp: str = "auto",
                     device: str = "auto", warmup: int = 3) -> dict[str, Any]:
    """Mean seconds per step and peak device memory (CUDA) on random inputs and targets."""
    if size % 2 ** (depth - 1):
        raise BadInput("--size", f"must be a multiple of 2**(depth-1) = {2 ** (depth - 1)}")
    if window % 2 == 0:
        raise BadInput("--window", "must be odd (as data.window)")
    dev = resolve_device(device, "--device")
    cfg = ModelConfig(init_features=features, depth=depth)
    if dev.type == "cpu":  # a step that cannot fit is refused, not left to the kernel's OOM killer
        need, have = step_bytes(cfg, window=window, size=size, batch_size=batch_size), host_memory_available()
        if have is not None and need > have:
            raise BadInput("--batch-size" if batch_size > 1 else "--size",
                           f"a CPU step of this model on {batch_size} x {window} x {size}² "
                           f"windows needs about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB is available; "
                           "pass a smaller --size or --batch-size (or --features/--depth); the defaults are "
                           "the paper's GPU settings")
    model = CenterSliceUNet(cfg).to(dev).train()
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
        "model_parameters": count_parameters(model), "features": features, "depth": depth,
        "input": [batch_size, 1, window, size, size], "amp": str(dtype).replace("torch.", "") if dtype else "off",
        "seconds_per_step": sec, "samples_per_s": batch_size / sec,
        "peak_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
        "torch": torch.__version__,
    }
