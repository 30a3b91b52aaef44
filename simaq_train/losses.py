"""Dice–Focal loss with an ignore label (reference §6.1, paper eqs. 4–6).

L = L_focal + λ · L_dice, with
  L_focal = (1/|Ω|) Σ_{x∈Ω} α (1 − p_t)^γ CE_x                       (|Ω| clamped to ≥ 1)
  L_dice  = 1 − (1/C) Σ_c 2 Σ p_c g_c / (Σ p_c + Σ g_c + ε)         (sums over batch and pixels)
Ω = pixels whose target is not ``ignore_index``; p and g are zeroed outside Ω.

The base 1 − p_t of the focal factor is clamped to ≥ :data:`FOCAL_BASE_MIN`: in float32 p_t rounds
to exactly 1 once the true class leads by ≳ 17 logits, and for 0 < γ < 1 the derivative
γ(1 − p_t)^(γ−1) is infinite there, so a confidently right pixel made the gradient NaN (and the run
diverge). The clamp acts only where 1 − p_t has rounded below 10⁻¹² (to 0 in float32), where CE is
itself below 10⁻⁷: the loss changes by less than α·10⁻⁷ there and not at all elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FOCAL_BASE_MIN = 1e-12  # lower bound of 1 − p_t in the focal factor (finite gradients for every γ ≥ 0)


@dataclass(frozen=True)
class LossConfig:
    alpha: float = 1.0
    gamma: float = 2.0
    dice_weight: float = 1.0
    dice_eps: float = 1e-3
    ignore_index: int = 255


def check_target(target: torch.Tensor, n_classes: int, ignore_index: int) -> None:
    """Refuse class ids outside ``0 … n_classes − 1`` other than ``ignore_index`` (ValueError)."""
    bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
    if bool(bad.any()):
        raise ValueError(f"target holds class ids outside 0..{n_classes - 1} and {ignore_index}")


def dice_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, cfg: LossConfig = LossConfig()
) -> torch.Tensor:
    """logits (B, C, H, W) any float dtype; target (B, H, W) integer class ids or ``ignore_index``.

    Returns a scalar in float32 (float64 for float64 logits): half-precision logits from autocast
    are promoted first.
    """
    if target.ndim == logits.ndim:
        target = target.squeeze(1)
    if logits.dtype != torch.float64:
        logits = logits.float()
    n_classes = logits.shape[1]
    valid = target != cfg.ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    if target.device.type == "cpu":  # on a GPU this would wait for it: fit checks the host batch
        check_target(target, n_classes, cfg.ignore_index)
    logp = F.log_softmax(logits, dim=1)
    logp_t = logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    ce = -logp_t
    p_t = logp_t.exp()
    vf = valid.to(logits.dtype)
    modulating = (1.0 - p_t).clamp_min(FOCAL_BASE_MIN).pow(cfg.gamma)  # finite gradient at p_t = 1
    focal = (cfg.alpha * modulating * ce * vf).sum() / vf.sum().clamp_min(1.0)
    prob = logp.exp() * vf.unsqueeze(1)
    onehot = F.one_hot(safe, n_classes).permute(0, 3, 1, 2).to(logits.dtype) * vf.unsqueeze(1)
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims) + cfg.dice_eps
    dice = 1.0 - (2.0 * inter / denom).mean()
    return focal + cfg.dice_weight * dice
