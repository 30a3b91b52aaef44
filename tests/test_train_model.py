"""The 3D→2D U-Net (parameter count, shapes), the Dice–Focal loss against hand-computed values,
optimiser groups and the EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simaq_train.config import OptimConfig
from simaq_train.engine.parts import EMA, make_optimizer, param_groups
from simaq_train.losses import LossConfig, dice_focal_loss
from simaq_train.metrics import confusion, iou_dice, mean_defined
from simaq_train.model import CenterSliceUNet, ModelConfig, count_parameters


def test_paper_configuration_has_exactly_68_675_990_parameters():
    with torch.device("meta"):
        paper = CenterSliceUNet(ModelConfig(in_channels=1, out_channels=4, init_features=64, depth=5))
        depth4 = CenterSliceUNet(ModelConfig(depth=4))
    assert count_parameters(paper) == 68_675_990
    assert count_parameters(paper.encoders) == 56_522_186
    assert count_parameters(paper.ups) + count_parameters(paper.decoders) == 12_153_544
    assert count_parameters(paper.head) == 260
    assert count_parameters(depth4) == 17_026_962
    assert ModelConfig() == ModelConfig(1, 4, 64, 5, True)


def test_forward_shapes_and_centre_slice_decoding():
    torch.manual_seed(0)
    model = CenterSliceUNet(ModelConfig(init_features=4, depth=3, out_channels=5)).eval()
    x = torch.randn(2, 1, 7, 32, 48)
    y = model(x)
    assert y.shape == (2, 5, 32, 48)
    x2 = x.clone()
    x2[:, :, 0] += 1.0  # the outermost slice of the window reaches the centre slice's logits
    assert not torch.allclose(model(x2), y)
    assert model(torch.randn(1, 1, 5, 16, 16)).shape == (1, 5, 16, 16)  # other window depths
    with pytest.raises(ValueError):
        model(torch.randn(1, 7, 32, 32))
    # depth-preserving pooling: encoder features keep all 7 slices at every level
    feats = []
    hooks = [e.register_forward_hook(lambda m, i, o: feats.append(o.shape)) for e in model.encoders]
    model(x)
    for h in hooks:
        h.remove()
    assert [tuple(f[2:]) for f in feats] == [(7, 32, 48), (7, 16, 24), (7, 8, 12)]
    # first skip omitted: the last decoder block sees only the upsampled features
    assert model.decoders[-1][0].in_channels == 4 and model.decoders[0][0].in_channels == 16


# --- loss ------------------------------------------------------------------------------------------

def _hand_loss(logits: list[list[float]], target: list[int], gamma: float = 2.0, eps: float = 1e-3,
               ignore: int = 255, alpha: float = 1.0, dice_weight: float = 1.0) -> float:
    """Reference §6.1 in plain Python: pixels are rows of ``logits`` (one per class)."""
    n_cls = len(logits[0])
    probs = []
    for z in logits:
        m = max(z)
        e = [math.exp(v - m) for v in z]
        probs.append([v / sum(e) for v in e])
    valid = [i for i, t in enumerate(target) if t != ignore]
    focal = sum(alpha * (1 - probs[i][target[i]]) ** gamma * -math.log(probs[i][target[i]]) for i in valid)
    focal /= max(len(valid), 1)
    dice = 0.0
    for c in range(n_cls):
        inter = sum(probs[i][c] for i in valid if target[i] == c)
        psum = sum(probs[i][c] for i in valid)
        gsum = sum(1 for i in valid if target[i] == c)
        dice += 2 * inter / (psum + gsum + eps)
    return focal + dice_weight * (1 - dice / n_cls)


def _as_tensors(logits: list[list[float]], target: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels laid out as a (1, C, 1, P) logit image and (1, 1, P) target."""
    lg = torch.tensor(logits, dtype=torch.float64).T[None, :, None, :]
    return lg, torch.tensor(target)[None, None, :]


def test_uniform_logits_match_the_closed_form():
    # C = 4, zero logits: p = 1/4 everywhere; one pixel of each class
    lg, t = _as_tensors([[0.0] * 4] * 4, [0, 1, 2, 3])
    focal = 0.75**2 * math.log(4)
    dice = 1 - (2 * 0.25) / (1.0 + 1.0 + 1e-3)
    assert dice_focal_loss(lg, t).item() == pytest.approx(focal + dice, rel=1e-6)
    assert focal + dice == pytest.approx(1.529916, abs=1e-6)


def test_loss_matches_hand_computation_with_ignored_pixels():
    logits = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [-1.0, 0.2, 3.0], [9.0, -9.0, 0.0], [0.0, 0.0, 0.0]]
    target = [0, 1, 2, 255, 1]
    lg, t = _as_tensors(logits, target)
    assert dice_focal_loss(lg, t).item() == pytest.approx(_hand_loss(logits, target), rel=1e-9)
    # ignored pixels do not matter, whatever their logits
    logits2 = [row[:] for row in logits]
    logits2[3] = [-50.0, 50.0, 3.0]
    lg2, _ = _as_tensors(logits2, target)
    assert dice_focal_loss(lg2, t).item() == pytest.approx(dice_focal_loss(lg, t).item(), rel=1e-12)
    lg2.requires_grad_(True)
    dice_focal_loss(lg2, t).backward()
    assert torch.all(lg2.grad[0, :, 0, 3] == 0) and torch.any(lg2.grad[0, :, 0, 0] != 0)
    # absent class (2 here): its Dice is 0 (the reference's constant +1/C)
    target_b = [0, 1, 1, 255, 0]
    assert dice_focal_loss(lg, torch.tensor(target_b)[None, None]).item() == pytest.approx(
        _hand_loss(logits, target_b), rel=1e-9)


def test_alpha_dice_eps_and_dice_weight_enter_the_loss_as_the_formula_says():
    """Non-default α, ε and λ against the hand computation: each of them changes the value, so a
    loss that ignored one (e.g. the focal α) would fail here."""
    logits = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [-1.0, 0.2, 3.0], [9.0, -9.0, 0.0], [0.0, 0.0, 0.0]]
    target = [0, 1, 2, 255, 1]
    lg, t = _as_tensors(logits, target)
    cfg = LossConfig(alpha=0.25, gamma=1.5, dice_eps=0.5, dice_weight=0.7)
    want = _hand_loss(logits, target, gamma=1.5, eps=0.5, alpha=0.25, dice_weight=0.7)
    assert dice_focal_loss(lg, t, cfg).item() == pytest.approx(want, rel=1e-9)
    # the check has power: dropping α, or ε at its default, gives another value
    assert want != pytest.approx(_hand_loss(logits, target, gamma=1.5, eps=0.5, dice_weight=0.7), rel=1e-3)
    assert want != pytest.approx(_hand_loss(logits, target, gamma=1.5, alpha=0.25, dice_weight=0.7), rel=1e-3)
    # α scales the focal term alone: with λ = 0 the loss is linear in α
    no_dice = dict(gamma=1.5, dice_weight=0.0)
    assert dice_focal_loss(lg, t, LossConfig(alpha=0.25, **no_dice)).item() == pytest.approx(
        0.25 * dice_focal_loss(lg, t, LossConfig(alpha=1.0, **no_dice)).item(), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_focal_gamma_below_one_keeps_gradients_finite_for_confident_pixels(dtype):
    """For 0 < γ < 1, d(1 − p)^γ/dp is infinite at p = 1, and p_t rounds to exactly 1 once the right
    class leads by ≳ 17 logits in float32 (≳ 37 in float64): the unclamped focal factor made such
    a pixel's gradient NaN and a run with loss.gamma 0.5 diverge."""
    leads = [20.0, 30.0, 50.0, 100.0]
    logits = [[lead, 0.0, -1.0, 0.5] for lead in leads] + [[0.3, 1.0, -0.5, 0.0]]  # plus one ordinary pixel
    target = [0] * len(leads) + [1]
    for gamma in (0.5, 0.1, 0.9, 0.0, 1.0, 2.0):
        lg, t = _as_tensors(logits, target)
        lg = lg.to(dtype).requires_grad_(True)
        loss = dice_focal_loss(lg, t, LossConfig(gamma=gamma))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(lg.grad).all(), (gamma, lg.grad)
        assert torch.any(lg.grad[0, :, 0, -1] != 0)  # the ordinary pixel still drives the gradient


def test_focal_clamp_leaves_ordinary_losses_unchanged():
    """The clamp of 1 − p_t acts only where p_t has rounded to 1: for ordinary logits the float32
    loss equals the hand formula (unclamped, in float64) within 1e-6 for every γ."""
    torch.manual_seed(3)
    lg = torch.randn(2, 4, 5, 6) * 3.0
    t = torch.randint(0, 4, (2, 5, 6))
    t[0, 0] = 255
    rows = lg.permute(0, 2, 3, 1).reshape(-1, 4).double().tolist()
    flat = t.reshape(-1).tolist()
    for gamma in (0.0, 0.25, 0.5, 1.0, 2.0, 3.5):
        got = dice_focal_loss(lg, t, LossConfig(gamma=gamma)).item()
        assert got == pytest.approx(_hand_loss(rows, flat, gamma=gamma), abs=1e-6), gamma


def test_dice_pools_over_the_batch():
    # batch of 2: class 2 occurs only in the second sample; the Dice sums run over batch and pixels,
    # so the loss is the hand loss of both samples' pixels taken together
    logits = [[[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.1, -0.3, 0.4]],
              [[-1.0, 0.2, 3.0], [1.0, 1.0, 0.5], [0.0, 2.5, -2.0]]]
    target = [[0, 1, 1], [2, 0, 1]]
    lg = torch.cat([_as_tensors(lo, ta)[0] for lo, ta in zip(logits, target)])
    t = torch.cat([_as_tensors(lo, ta)[1] for lo, ta in zip(logits, target)])
    assert lg.shape == (2, 3, 1, 3) and t.shape == (2, 1, 3)
    pooled = _hand_loss(logits[0] + logits[1], target[0] + target[1])
    assert dice_focal_loss(lg, t).item() == pytest.approx(pooled, rel=1e-9)
    # not the mean of per-sample losses (which would count class 2's absence in sample 0)
    per_sample = (_hand_loss(logits[0], target[0]) + _hand_loss(logits[1], target[1])) / 2
    assert pooled != pytest.approx(per_sample, rel=1e-3)


def test_loss_identities():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    target = torch.randint(0, 4, (2, 6, 5))
    target[0, :2] = 255
    # gamma = 0, no Dice: the focal term is the mean cross-entropy over non-ignored pixels
    cfg = LossConfig(gamma=0.0, dice_weight=0.0)
    ce = F.cross_entropy(logits, target, ignore_index=255)
    assert dice_focal_loss(logits, target, cfg).item() == pytest.approx(ce.item(), rel=1e-12)
    # everything ignored: focal 0 (|Ω| clamped to 1), every Dice 0 -> loss 1
    assert dice_focal_loss(logits, torch.full_like(target, 255)).item() == pytest.approx(1.0)
    # a confident, correct prediction of a batch holding every class: loss -> 0
    sure = F.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).double() * 40.0
    assert dice_focal_loss(sure, target).item() < 1e-3
    # (B, 1, H, W) targets are accepted; class ids out of range are refused
    assert dice_focal_loss(logits, target[:, None]).item() == pytest.approx(dice_focal_loss(logits, target).item())
    with pytest.raises(ValueError):
        dice_focal_loss(logits, torch.full_like(target, 4))
    # half precision logits are computed in float32
    assert dice_focal_loss(logits.half(), target).dtype == torch.float32


# --- optimiser groups, EMA, metrics ----------------------------------------------------------------

def test_weight_decay_skips_norms_prelu_and_biases():
    model = CenterSliceUNet(ModelConfig(init_features=4, depth=3))
    groups = param_groups(model, 1e-5)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 1e-5 and groups[1]["weight_decay"] == 0.0
    assert not decay & no_decay and len(decay) + len(no_decay) == len(list(model.parameters()))
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            is_conv_weight = isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d)) \
                and pname == "weight"
            assert (id(p) in decay) == is_conv_weight, f"{name}.{pname}"
    opt = make_optimizer(model, OptimConfig(lr=1e-3, weight_decay=1e-5))
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.9, 0.999)


def test_ema_averages_parameters_and_carries_batchnorm_statistics():
    torch.manual_seed(0)
    model = CenterSliceUNet(ModelConfig(init_features=2, depth=2))
    ema = EMA(model, decay=0.9)
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(1000) == 0.9
    before = [p.detach().clone() for p in ema.model.parameters()]
    model.train()
    model(torch.randn(3, 1, 3, 8, 8) * 5 + 2)  # moves BatchNorm running statistics
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, 1000)
    for pe, p0, p in zip(ema.model.parameters(), before, model.parameters()):
        assert torch.allclose(pe, 0.9 * p0 + 0.1 * p, atol=1e-6)
    for be, b in zip(ema.model.buffers(), model.buffers()):
        assert torch.equal(be, b)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_iou_and_dice_from_confusion():
    pred = torch.tensor([0, 1, 1, 2, 2, 0])
    target = torch.tensor([0, 1, 2, 2, 255, 1])
    cm = confusion(pred, target, 4)
    assert cm.sum() == 5
    # rows = target, columns = prediction: target 2 predicted 1 and target 1 predicted 0, never the reverse
    assert cm[2, 1] == 1 and cm[1, 2] == 0 and cm[1, 0] == 1 and cm[0, 1] == 0
    iou, dice = iou_dice(cm)
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(1 / 3) and iou[2] == pytest.approx(1 / 2)
    assert iou[3] is None and dice[1] == pytest.approx(2 / 4)
    assert mean_defined(iou, [1, 2, 3]) == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_iou_and_dice_where_false_positives_and_false_negatives_differ():
    """Hand-computed IoU = tp / (tp + fp + fn) and Dice = 2tp / (2tp + fp + fn) on a matrix whose
    classes have fp ≠ fn, so a formula that drops or doubles one of them fails (the symmetric case
    above cannot tell)."""
    cm = np.array([[5, 2, 0, 0, 0],   # rows = target, columns = prediction
                   [1, 3, 3, 1, 0],
                   [0, 0, 6, 0, 0],
                   [0, 0, 0, 0, 0],
                   [0, 0, 0, 0, 0]])
    # class 0: tp 5, fp 1, fn 2; class 1: tp 3, fp 2, fn 5; class 2: tp 6, fp 3, fn 0;
    # class 3: only a false positive; class 4: never present nor predicted
    iou, dice = iou_dice(cm)
    assert iou[:4] == pytest.approx([5 / 8, 3 / 10, 6 / 9, 0.0]) and iou[4] is None
    assert dice[:4] == pytest.approx([10 / 13, 6 / 13, 12 / 15, 0.0]) and dice[4] is None
    for i, d in zip(iou[:4], dice[:4]):
        assert d == pytest.approx(2 * i / (1 + i))
    # a transposed matrix swaps fp and fn: both scores are symmetric in them
    assert iou_dice(cm.T) == (iou, dice)


def test_confusion_tensor_stays_on_device_and_meter_accumulates_there():
    from simaq_train.engine.fit import _Meter
    from simaq_train.metrics import confusion_tensor

    pred = torch.tensor([[0, 1, 1], [2, 3, 0]])
    target = torch.tensor([[0, 1, 7], [2, 255, -1]])  # 7 and -1 are not classes: skipped like 255
    mask = torch.tensor([True, True, False])
    cm = confusion_tensor(pred, target, 4, mask=mask)
    assert isinstance(cm, torch.Tensor) and cm.dtype == torch.int64 and int(cm.sum()) == 3
    assert np.array_equal(cm.numpy(), confusion(pred.numpy(), target.numpy(), 4, mask=mask.numpy()))
    meter = _Meter(4, 10, 0.0)
    logits = F.one_hot(pred, 4).permute(2, 0, 1)[None].float().expand(2, -1, -1, -1)
    for loss in (0.25, 0.5):
        meter.add(torch.tensor(loss), logits, target[None].expand(2, -1, -1), torch.tensor([1, 0]), 255)
    assert isinstance(meter.cm, torch.Tensor) and isinstance(meter.loss_sum, torch.Tensor)
    rec = meter.record(["bg", "a", "b", "c"], 1, 0, 0, 1e-3)
    assert rec["lr"] == 1e-3 and rec["loss"] == 0.375 and rec["real_fraction"] == 0.5
    assert rec["iou"] == {"bg": 1.0, "a": 1.0, "b": 1.0, "c": None}
    assert meter.cm is None and meter.loss_n == 0


def test_ema_update_equals_the_per_tensor_update_bit_for_bit():
    torch.manual_seed(1)
    model = CenterSliceUNet(ModelConfig(init_features=2, depth=2))
    ema = EMA(model, decay=0.99)
    model.train()
    model(torch.randn(2, 1, 3, 8, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    want = [pe.detach().clone().lerp_(p.detach(), 1.0 - ema.decay_at(5))
            for pe, p in zip(ema.model.parameters(), model.parameters())]
    ema.update(model, 5)
    assert all(torch.equal(a, b) for a, b in zip(ema.model.parameters(), want))
    assert all(torch.equal(a, b) for a, b in zip(ema.model.buffers(), model.buffers()))


def test_decoded_slice_is_the_window_centre_within_the_encoder_receptive_field():
    """The logits are those of the window's centre slice (module docstring): with depth 1 the only
    path is two 3×3×3 convolutions (receptive field ±2 slices) read at slice W//2, so in a 7-slice
    window slices 0 and 6 cannot reach the output and slices 1..5 do. A model decoding slice 0 would
    see slices 0..2 instead."""
    torch.manual_seed(0)
    model = CenterSliceUNet(ModelConfig(init_features=2, depth=1, out_channels=3)).eval()
    x = torch.randn(1, 1, 7, 8, 8)
    with torch.no_grad():
        y = model(x)
        changed = []
        for s in range(7):
            x2 = x.clone()
            x2[:, :, s] += 3.0 * torch.randn(1, 1, 8, 8)
            changed.append(not torch.equal(model(x2), y))
    assert changed == [False, True, True, True, True, True, False]
    # the same window shifted by one slice along z (a new slice appended at the end) moves the centre:
    # the output equals the model at centre 4 of the old window, i.e. translation along the window
    with torch.no_grad():
        x9 = torch.cat([x, torch.randn(1, 1, 2, 8, 8)], dim=2)  # 9 slices, centre 4
        shifted = x9[:, :, 1:8]  # 7 slices centred on slice 4 of x9
        assert torch.allclose(model(shifted), model(x9[:, :, 0:9]), atol=1e-5)
