"""The optimiser step of the fit loop on a tiny model: gradient accumulation (full and partial
groups), clipping, and seeded initial weights (reference §6.3; docs/training.md "Loop")."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from simaq_train.config import config_from_dict
from simaq_train.engine.fit import Dist, Trainer
from simaq_train.losses import dice_focal_loss
from simaq_train.testing import write_synthetic_dataset


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("eng") / "ds", n_samples=2, shape=(8, 16, 16),
                                   empty_margin=0, seed=4)


def make_trainer(ds: Path, out: Path, **optim) -> Trainer:
    tree = {"seed": optim.pop("seed", 5), "data": {"train": [str(ds)], "background_drop": 0.0, "window": 3},
            "model": {"init_features": 2, "depth": 1}, "augment": {"enable": False},
            "optim": {"batch_size": 2, "ema_decay": 0.0, "amp": "off", "clip": 0.0, **optim},
            "run": {"out": str(out), "device": "cpu", "log_every": 1000, "checkpoint_every": 1000}}
    return Trainer(config_from_dict(tree), Dist())


def micro_batches(n: int, gen_seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(gen_seed)
    return [(torch.randn(2, 1, 3, 8, 8, generator=g, dtype=torch.float64),
             torch.randint(0, 4, (2, 8, 8), generator=g)) for _ in range(n)]


def reference_mean_grad(model: torch.nn.Module, batches, loss_cfg) -> list[torch.Tensor]:
    """The mean over micro-batches of each micro-batch's own gradient (computed separately)."""
    ref = copy.deepcopy(model)
    total = [torch.zeros_like(p) for p in ref.parameters()]
    for x, y in batches:
        ref.zero_grad(set_to_none=True)
        dice_focal_loss(ref(x), y, loss_cfg).backward()
        for t, p in zip(total, ref.parameters()):
            t += p.grad
    return [t / len(batches) for t in total]


def run_group(tr: Trainer, batches, micro: int | None) -> list[torch.Tensor]:
    """Accumulate ``batches`` through forward_backward, take one optimiser step; return the
    gradients the optimiser saw."""
    seen: list[list[torch.Tensor]] = []
    inner = tr.optimizer.step

    def capture(*a, **k):
        seen.append([p.grad.detach().clone() for p in tr.model.parameters()])
        return inner(*a, **k)

    tr.optimizer.step = capture  # type: ignore[method-assign]
    for x, y in batches:
        tr.forward_backward(x, y, sync=True)
    tr.optimizer_step(micro)
    assert len(seen) == 1 and tr.state.step == 1
    assert all(p.grad is None for p in tr.model.parameters())  # zeroed after the step
    return seen[0]


@pytest.mark.parametrize("n_micro", [4, 2, 3])
def test_an_optimiser_step_sees_the_mean_gradient_of_its_micro_batches(tiny_ds, tmp_path, n_micro):
    """accumulate=4: a full group (4 micro-batches) and a partial one at an epoch's end (2 or 3)
    both step with the mean of their micro-batches' gradients (float64, exact up to rounding)."""
    tr = make_trainer(tiny_ds, tmp_path / "run", accumulate=4)
    tr.model.double().train()
    batches = micro_batches(n_micro)
    want = reference_mean_grad(tr.model, batches, tr.cfg.loss)
    before = [p.detach().clone() for p in tr.model.parameters()]
    got = run_group(tr, batches, None if n_micro == 4 else n_micro)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    assert any(not torch.equal(b, p) for b, p in zip(before, tr.model.parameters()))  # a step was taken


def test_clipping_scales_the_mean_gradient_to_the_clip_norm(tiny_ds, tmp_path):
    clip = 1e-3
    tr = make_trainer(tiny_ds, tmp_path / "run", accumulate=2, clip=clip)
    tr.model.double().train()
    batches = micro_batches(2, gen_seed=1)
    want = reference_mean_grad(tr.model, batches, tr.cfg.loss)
    norm = math.sqrt(sum(float((w * w).sum()) for w in want))
    assert norm > 10 * clip  # the clip is active
    got = run_group(tr, batches, None)
    got_norm = math.sqrt(sum(float((g * g).sum()) for g in got))
    assert got_norm == pytest.approx(clip, rel=1e-5)
    for g, w in zip(got, want):  # same direction: the mean gradient scaled by clip / norm
        torch.testing.assert_close(g, w * (clip / norm), rtol=1e-5, atol=1e-12)


def test_an_epoch_ending_in_a_partial_group_steps_on_it(tiny_ds, tmp_path):
    """Batches per epoch not a multiple of accumulate: ceil(n / accumulate) optimiser steps, the
    last one on the remaining n % accumulate micro-batches."""
    probe = make_trainer(tiny_ds, tmp_path / "probe", accumulate=1)
    n = len(probe.stream.plan(0))
    acc = next(a for a in (3, 4, 5, 6, 7) if n % a)
    assert n > acc, n
    tr = make_trainer(tiny_ds, tmp_path / "run", accumulate=acc, epochs=1)
    calls: list[int | None] = []
    inner = tr.optimizer_step

    def record(micro=None):
        calls.append(micro)
        return inner(micro)

    tr.optimizer_step = record  # type: ignore[method-assign]
    res = tr.fit()
    assert calls == [None] * (n // acc) + [n % acc]
    assert res.step == math.ceil(n / acc) and res.epoch == 1 and res.finished


def test_initial_weights_are_a_function_of_the_seed(tiny_ds, tmp_path):
    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        return make_trainer(tiny_ds, tmp_path / name, seed=seed).model.state_dict()

    a, b, c = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert a.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    convs = [k for k in a if k.endswith("weight") and a[k].ndim >= 4]
    assert convs and all(not torch.equal(a[k], c[k]) for k in convs)


@pytest.mark.parametrize("device, local_rank, visible, said", [
    ("auto", 1, 1, "rank 1 has LOCAL_RANK 1 but sees 1 GPU(s)"),
    ("cuda", 2, 2, "rank 1 has LOCAL_RANK 2 but sees 2 GPU(s)"),
    ("cuda:0", 0, 2, "cuda:0 names one GPU, but each of the 2 processes"),
])
def test_a_distributed_run_refuses_a_gpu_its_rank_cannot_have(tiny_ds, tmp_path, monkeypatch, device, local_rank,
                                                              visible, said):
    """Under torchrun each rank takes cuda:LOCAL_RANK: more ranks per node than GPUs failed in CUDA
    ('invalid device ordinal', exit 1) and an explicit cuda:N was silently replaced by the rank's GPU."""
    from simaq_factory.errors import BadInput

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)

    def no_gpu(_d):  # type: ignore[no-untyped-def]
        raise AssertionError("set_device reached with a GPU the rank cannot have")

    monkeypatch.setattr(torch.cuda, "set_device", no_gpu)
    tree = {"seed": 5, "data": {"train": [str(tiny_ds)], "window": 3}, "model": {"init_features": 2, "depth": 1},
            "run": {"out": str(tmp_path / "run"), "device": device}}
    with pytest.raises(BadInput) as err:
        Trainer(config_from_dict(tree), Dist(rank=1, world=2, local_rank=local_rank))
    assert err.value.path == "run.device" and said in str(err.value), str(err.value)
    assert not (tmp_path / "run").exists()
