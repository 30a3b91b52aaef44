"""Architecture properties of the 3D→2D U-Net (simaq_train.model) that the parameter-count and shape
tests do not pin: max pooling, the skip_first switch, the divisor, and reset_parameters matching
PyTorch's default initialisation drawn from the given generator."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from simaq_train.model import CenterSliceUNet, ModelConfig, count_parameters


def test_encoder_levels_are_joined_by_2x2_max_pooling_along_h_and_x_only():
    """Each encoder after the first sees the previous encoder's output max-pooled over 2×2 (H, X)
    windows, the window depth untouched (reference §5: max pooling, kernel (1, 2, 2))."""
    torch.manual_seed(0)
    model = CenterSliceUNet(ModelConfig(init_features=3, depth=3)).eval()
    seen_in, seen_out = [], []

    def record(module, inputs, output):
        seen_in.append(inputs[0])
        seen_out.append(output)

    hooks = [e.register_forward_hook(record) for e in model.encoders]
    with torch.no_grad():
        model(torch.randn(1, 1, 5, 16, 24))
    for h in hooks:
        h.remove()
    for prev_out, next_in in zip(seen_out[:-1], seen_in[1:]):
        b, c, w, h, x = prev_out.shape
        want = prev_out.reshape(b, c, w, h // 2, 2, x // 2, 2).amax(dim=(4, 6))  # independent of F.max_pool
        assert torch.equal(next_in, want)


def test_skip_first_false_adds_the_full_resolution_skip():
    """skip_first=False concatenates the level-0 centre slice into the last decoder block: exactly
    9·f·f more weights (its first 3×3 convolution gets f more input channels), the forward pass works,
    and the output then depends on that full-resolution skip."""
    f = 4
    with_skip = CenterSliceUNet(ModelConfig(init_features=f, depth=3, skip_first=False))
    without = CenterSliceUNet(ModelConfig(init_features=f, depth=3, skip_first=True))
    assert count_parameters(with_skip) - count_parameters(without) == 9 * f * f
    assert with_skip.decoders[-1][0].in_channels == 2 * f
    torch.manual_seed(0)
    with_skip.eval()
    x = torch.randn(2, 1, 3, 16, 16)
    with torch.no_grad():
        y = with_skip(x)
        assert y.shape == (2, 4, 16, 16)
        # remove the level-0 skip's contribution: zero the decoder weights that read it
        w = with_skip.decoders[-1][0].weight
        saved = w[:, f:].clone()
        w[:, f:] = 0
        y0 = with_skip(x)
        w[:, f:] = saved
    assert not torch.allclose(y, y0)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_divisor_is_exactly_the_spatial_sizes_the_network_maps_onto_themselves(depth):
    """`divisor` (used by inference to pad) is the smallest step of H/X sizes that the network maps to
    logits of the same H/X: every multiple works, a size that is not a multiple does not."""
    model = CenterSliceUNet(ModelConfig(init_features=1, depth=depth, out_channels=2)).eval()
    ok = []
    with torch.no_grad():
        for size in range(2, 17):
            try:
                y = model(torch.zeros(1, 1, 3, size, 8))
                ok.append(y.shape[-2:] == (size, 8))
            except RuntimeError:
                ok.append(False)
    assert ok == [s % 2 ** (depth - 1) == 0 for s in range(2, 17)]
    assert ok == [s % model.divisor == 0 for s in range(2, 17)]


def test_depth_below_one_is_refused():
    with pytest.raises(ValueError):
        CenterSliceUNet(ModelConfig(depth=0))
    with pytest.raises(ValueError):
        CenterSliceUNet(ModelConfig(init_features=0))


def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.fill_(3.0)
                m.running_var.fill_(5.0)


def test_reset_parameters_restores_norm_and_prelu_defaults_after_training():
    """reset_parameters re-draws *every* weight (docstring: BatchNorm 1/0, PReLU 0.25), even of a
    model whose weights and running statistics have moved."""
    model = CenterSliceUNet(ModelConfig(init_features=2, depth=2))
    _perturb(model)
    model.reset_parameters(torch.Generator().manual_seed(0))
    fresh = CenterSliceUNet(ModelConfig(init_features=2, depth=2))  # PyTorch's own defaults
    n_bn = n_prelu = 0
    for m, ref in zip(model.modules(), fresh.modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n_bn += 1
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
        elif isinstance(m, nn.PReLU):
            n_prelu += 1
            assert torch.equal(m.weight, ref.weight) and torch.all(m.weight == 0.25)
    assert n_bn == n_prelu == 3 * 2  # two per block: 2 encoder blocks, 1 decoder block


def test_reset_parameters_matches_pytorch_default_bounds():
    """Conv weights and biases are U(±1/√fan_in) (Kaiming-uniform with a = √5 has the same bound),
    fan_in as PyTorch computes it, for Conv3d, Conv2d and ConvTranspose2d alike: every value inside
    the bound and the largest magnitude close to it (>= 0.8·bound with at least 32 draws)."""
    model = CenterSliceUNet(ModelConfig(init_features=32, depth=2, out_channels=40))
    _perturb(model)
    model.reset_parameters(torch.Generator().manual_seed(3))
    checked = set()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
            bound = 1.0 / math.sqrt(fan_in)
            tensors = [m.weight] + ([m.bias] if m.bias is not None else [])
            for t in tensors:
                assert t.numel() >= 32
                amax = t.abs().max().item()
                assert amax <= bound * (1 + 1e-6), (type(m).__name__, amax, bound)
                assert amax >= 0.8 * bound, (type(m).__name__, amax, bound)
            checked.add((type(m).__name__, m.bias is not None))
    assert checked == {("Conv3d", False), ("Conv2d", False), ("ConvTranspose2d", True), ("Conv2d", True)}


def test_reset_parameters_is_a_function_of_the_generator_only():
    """Same seed -> same weights whatever the global RNG state; another seed -> other weights."""
    cfg = ModelConfig(init_features=2, depth=2)
    torch.manual_seed(1)
    a = CenterSliceUNet(cfg).reset_parameters(torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    b = CenterSliceUNet(cfg).reset_parameters(torch.Generator().manual_seed(5))
    c = CenterSliceUNet(cfg).reset_parameters(torch.Generator().manual_seed(6))
    pa, pb, pc = (list(m.parameters()) for m in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not all(torch.equal(x, y) for x, y in zip(pa, pc))
    # biases too (the only biases are the up-convolutions' and the head's)
    assert torch.equal(a.head.bias, b.head.bias) and torch.equal(a.ups[0].bias, b.ups[0].bias)
