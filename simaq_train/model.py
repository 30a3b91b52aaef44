"""The hybrid 3D→2D U-Net (reference §5): a 3D encoder over a window of slices along the tilt axis
whose bottleneck's centre slice is decoded in 2D into per-class logits for the centre slice.

Input ``(B, C_in, W, H, X)`` float (W = window depth, odd; H and X divisible by ``2**(depth-1)``),
output ``(B, C_out, H, X)`` raw logits. Pooling never reduces the window depth (kernel (1, 2, 2)).
With ``init_features=64, depth=5, in_channels=1, out_channels=4, skip_first=True`` the network has
exactly 68,675,990 parameters (the paper's model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (reference §9.4 ``model.*``)."""

    in_channels: int = 1
    out_channels: int = 4
    init_features: int = 64
    depth: int = 5
    skip_first: bool = True


def _block(cin: int, cout: int, dims: int) -> nn.Sequential:
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    norm = nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d
    return nn.Sequential(
        conv(cin, cout, kernel_size=3, padding=1, bias=False),
        norm(cout),
        nn.PReLU(),
        conv(cout, cout, kernel_size=3, padding=1, bias=False),
        norm(cout),
        nn.PReLU(),
    )


class CenterSliceUNet(nn.Module):
    """3D encoder (depth-preserving pooling) → centre slice → 2D decoder with centre-slice skips."""

    def __init__(self, cfg: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        if cfg.depth < 1 or cfg.init_features < 1:
            raise ValueError(f"model: depth and init_features must be >= 1, got {cfg}")
        self.cfg = cfg
        widths = [cfg.init_features * 2**i for i in range(cfg.depth)]
        self.encoders = nn.ModuleList()
        cin = cfg.in_channels
        for w in widths:
            self.encoders.append(_block(cin, w, 3))
            cin = w
        self.pool = nn.MaxPool3d(kernel_size=(1, 2, 2))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(cfg.depth - 1)):
            w = widths[level]
            self.ups.append(nn.ConvTranspose2d(widths[level + 1], w, kernel_size=2, stride=2))
            skip = 0 if (level == 0 and cfg.skip_first) else w
            self.decoders.append(_block(w + skip, w, 2))
        self.head = nn.Conv2d(widths[0], cfg.out_channels, kernel_size=1)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> CenterSliceUNet:
        """Re-draw every weight from ``generator`` with PyTorch's default initialisation (reference
        §5: no custom init), so a run's initial weights are a function of its seed. Convolutions:
        Kaiming-uniform with a = √5 and biases U(±1/√fan_in); BatchNorm 1/0; PReLU 0.25."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
                w = m.weight
                fan_in = w.shape[1] * math.prod(w.shape[2:])
                nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=generator)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
            elif isinstance(m, nn.PReLU):
                nn.init.constant_(m.weight, 0.25)
        return self

    @property
    def divisor(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** (self.cfg.depth - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected (B, C, W, H, X), got {tuple(x.shape)}")
        c = x.shape[2] // 2
        skips: list[torch.Tensor] = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = self.pool(x)
            x = enc(x)
            skips.append(x[:, :, c])
        y = skips.pop()
        for level, (up, dec) in zip(reversed(range(self.cfg.depth - 1)), zip(self.ups, self.decoders)):
            y = up(y)
            skip = skips[level]
            if not (level == 0 and self.cfg.skip_first):
                y = torch.cat([y, skip], dim=1)
            y = dec(y)
        return self.head(y)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
