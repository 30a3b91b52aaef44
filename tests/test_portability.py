"""Bytes that do not depend on the CPU: exactly rounded resampling, libm transcendentals for the
phantom's sampling, and verify's comparison of a regenerated noisy volume across machines."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simaq_factory import portable_math
from simaq_factory.artifacts import assemble
from simaq_factory.store import verify

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("src,dst", [((9, 12, 7), (32, 30, 29)), ((24, 24, 24), (17, 40, 24)), ((5, 6, 7), (5, 6, 7))])
def test_resample_is_trilinear_interpolation(src, dst):
    """Oracle: torch's trilinear interpolation (align_corners=False), to float32 rounding (its
    weights are float32, ours float64 rounded once)."""
    x = torch.rand(src, generator=torch.Generator().manual_seed(1))
    ref = F.interpolate(x[None, None], size=dst, mode="trilinear", align_corners=False)[0, 0]
    out = assemble.resample(x, dst)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.allclose(out, ref, rtol=0, atol=2e-6)
    assert out.data_ptr() != x.data_ptr()  # a new tensor even when the shape is unchanged


def test_resample_by_hand_and_edges():
    """1D along each axis: 2 → 4 samples (align_corners=False) is [a, .75a+.25b, .25a+.75b, b];
    a constant field stays exactly constant (the two weights sum to 1 exactly in float32)."""
    for dim in range(3):
        shape = [1, 1, 1]
        shape[dim] = 2
        x = torch.tensor([1.0, 3.0]).reshape(shape)
        dst = list(shape)
        dst[dim] = 4
        assert assemble.resample(x, tuple(dst)).flatten().tolist() == [1.0, 1.5, 2.5, 3.0]
    const = torch.full((5, 7, 3), 0.3)
    assert torch.equal(assemble.resample(const, (13, 11, 17)), torch.full((13, 11, 17), 0.3))


def test_resample_last_pass_in_steps_is_the_same_bytes(monkeypatch):
    """The CPU's stepwise z pass does the same operations per element as one whole-volume pass."""
    x = torch.rand(6, 20, 20, generator=torch.Generator().manual_seed(2))
    whole = assemble._lerp_dim(x, 0, 45)
    monkeypatch.setattr(assemble, "_CPU_STEP_BYTES", 3 * 20 * 20 * 4)  # 3 planes per step, ragged end
    assert torch.equal(assemble.resample(x, (45, 20, 20)), whole)


def test_portable_math_is_libm_per_element():
    x = np.random.default_rng(3).uniform(-20.0, 20.0, size=(4, 5))
    for f, g in ((portable_math.exp, math.exp), (portable_math.sin, math.sin), (portable_math.cos, math.cos)):
        y = f(x)
        assert y.shape == x.shape and y.dtype == np.float64
        assert [float(v) for v in y.ravel()] == [g(float(v)) for v in x.ravel()]
    assert portable_math.cos(0.0).shape == () and float(portable_math.cos(0.0)) == 1.0


_NUMPY_TRANSCENDENTAL = {"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan",
                         "arcsin", "arccos", "arctan", "arctan2", "sinh", "cosh", "tanh", "power",
                         "float_power", "cbrt"}


def test_phantom_and_bank_sampling_call_no_numpy_transcendental():
    """NumPy's SIMD loops for these round differently on AVX-512 CPUs (numpy#23523): the phantom's
    and the noise banks' code takes them from simaq_factory.portable_math, and spells integer powers out."""
    offenders = []
    paths = [*(REPO / "simaq_factory" / "phantom").glob("*.py"),
             *(REPO / "simaq_factory" / "artifacts" / name for name in ("banks.py", "cracks.py", "perlin.py"))]
    for path in sorted(paths):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in _NUMPY_TRANSCENDENTAL
                    and isinstance(node.value, ast.Name) and node.value.id == "np"):
                offenders.append(f"{path.name}:{node.lineno} np.{node.attr}")
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)
                    and not (isinstance(node.right, ast.Constant) and node.right.value == 2)):
                offenders.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    # Python ints and floats (exact, or the C library's pow), not arrays:
    allowed = {"banks.py 2 ** 32", "banks.py 2 ** 23", "banks.py 2 ** 18", "banks.py 96 ** 3",
               "banks.py edge ** 3", "banks.py e ** 3", "cracks.py size ** 3",
               "cracks.py float(torch.sum(k * k)) ** 1.5", "antialias.py k ** 3", "deform.py 2 ** 63",
               "deform.py float(np.sum(w * w)) ** len(axes)",
               "sample.py (float(np.prod(r)) / pack_r3) ** (1.0 / 3.0)"}
    left = [o for o in offenders if f"{o.split(':')[0]} {o.split(' ', 1)[1]}" not in allowed]
    assert not left, f"numpy transcendental or power in the phantom or bank code: {left}"


def _prov(cpu, commit="abc"):
    return {"cpu_kernels": cpu, "versions": {"simaq-factory": "0.1.0", "simaq-factory-commit": commit,
                                              "torch": torch.__version__}}


def test_compare_noisy_exact_here_tolerant_across_machines(monkeypatch):
    here = "x86_64 AVX512"
    monkeypatch.setattr(verify, "cpu_kernels", lambda: here)
    stored = np.random.default_rng(4).uniform(0.1, 1.0, (4, 5, 6)).astype(np.float32)
    ulp = stored.copy()
    ulp[1, 2, 3] = np.nextafter(ulp[1, 2, 3], np.float32(2.0))
    far = stored * np.float32(1.01)
    same = ""
    cases = [
        (stored.copy(), here, same, 0, 0),               # the same bytes: nothing to say
        (ulp, here, same, 0, 1),                          # same software and kernels: must be exact
        (ulp, "x86_64 AVX2", same, 1, 0),                 # other CPU kernels: rounding is a note
        (ulp, None, same, 1, 0),                          # kernels not recorded (older dataset)
        (ulp, here, " (built with X, this is Y)", 1, 0),  # other software
        (far, "x86_64 AVX2", same, 0, 1),                 # beyond rounding: a problem anywhere
    ]
    for fresh, built_on, other_software, notes, problems in cases:
        report = verify.VerifyReport(n_shards=1)
        verify._compare_noisy(stored, fresh, 7, _prov(built_on), other_software, report)
        assert (len(report.notes), len(report.problems)) == (notes, problems), (built_on, other_software, report)
        for line in report.notes + report.problems:
            assert line.startswith("sample 7: regenerated noisy")
    report = verify.VerifyReport(n_shards=1)
    verify._compare_noisy(stored, ulp, 7, _prov("x86_64 AVX2"), same, report)
    assert "built on x86_64 AVX2 CPU kernels, here x86_64 AVX512" in report.notes[0]


def test_software_and_machine_descriptions():
    from simaq_factory.versions import built_on, describe_software

    v = {"simaq-factory": "0.1.0", "simaq-factory-commit": "0123456789abcdef", "torch": "2.13.0+cpu"}
    assert describe_software(v) == "simaq-factory 0.1.0 (0123456789ab), torch 2.13.0+cpu"
    assert describe_software({**v, "simaq-factory-commit": None}) == "simaq-factory 0.1.0, torch 2.13.0+cpu"
    assert describe_software({**v, "simaq-factory-modified": True}) == \
        "simaq-factory 0.1.0 (0123456789ab, modified), torch 2.13.0+cpu"
    assert describe_software({**v, "simaq-factory-modified": False}) == describe_software(v)
    assert built_on({"device": "cpu", "cpu_kernels": "aarch64 SVE256"}) == "cpu, aarch64 SVE256 CPU kernels"
    assert built_on({"device": "cpu"}) == "cpu, unrecorded CPU kernels"
    assert built_on({"device": "cuda:0", "device_name": "NVIDIA H100", "cpu_kernels": "x"}) == "cuda:0, NVIDIA H100"


def test_libm_array_answers_trig_from_libm_and_refuses_the_rest():
    draws = portable_math.LibmGenerator(np.random.default_rng(6)).uniform(size=(3, 4))
    assert isinstance(draws, portable_math.LibmArray)
    assert np.array_equal(draws, np.random.default_rng(6).uniform(size=(3, 4)))  # the generator's own draws
    angles = 2 * np.pi * draws  # other ufuncs keep the tag, so the trigonometry of derived arrays is libm's too
    assert isinstance(angles, portable_math.LibmArray) and isinstance(angles[1:], portable_math.LibmArray)
    for ufunc, f in ((np.sin, math.sin), (np.cos, math.cos), (np.exp, math.exp)):
        y = ufunc(angles)
        assert type(y) is np.ndarray
        assert [float(v) for v in y.ravel()] == [f(2 * math.pi * float(u)) for u in draws.ravel()]
    assert type(np.sin(angles) * np.cos(angles)) is np.ndarray
    for refused in (np.log, np.power, np.tan):
        with pytest.raises(TypeError, match=refused.__name__):
            refused(angles, 2.0) if refused is np.power else refused(angles)
    with pytest.raises(AttributeError):
        portable_math.LibmGenerator(np.random.default_rng(6)).normal()


@pytest.mark.parametrize("name", ["perlin_lo_2d", "perlin_hi_3d"])
def test_perlin_banks_take_their_trigonometry_from_libm(monkeypatch, name):
    """perlin-numpy applies np.sin/np.cos to its gradient angles; the banks route them to the C
    library (numpy's own loops round differently on AVX-512 CPUs). Perturbing portable_math's
    functions changes the entry, so the routing is what computes it; where numpy's loops agree with
    libm (every CPU without AVX-512), the entry is the one plain perlin-numpy gives."""
    from perlin_numpy import generate_fractal_noise_2d, generate_fractal_noise_3d

    from simaq_factory.artifacts import banks
    from simaq_factory.recipe.io import load_recipe

    spec = banks.bank_specs(load_recipe(REPO / "recipes" / "smoke.yaml").artifacts, (64, 64, 64), 11)[name]
    spec = {**spec, "edge": 32 if name == "perlin_hi_3d" else spec["edge"]}
    entry = banks.generate_piece(spec, 1, 2)[0]
    assert entry.dtype == np.float32 and entry.min() == 0.0 and entry.max() == 1.0

    x = np.random.default_rng(7).uniform(0, 2 * np.pi, 4096)
    if np.array_equal(np.sin(x), portable_math.sin(x)) and np.array_equal(np.cos(x), portable_math.cos(x)):
        generate = generate_fractal_noise_2d if name == "perlin_lo_2d" else generate_fractal_noise_3d
        ndim = 2 if name == "perlin_lo_2d" else 3
        plain = generate((spec["edge"],) * ndim, (spec["res"],) * ndim, octaves=spec["octaves"],
                         persistence=spec["persistence"], rng=banks._entry_rng(spec, 1))
        plain = ((plain - plain.min()) / (plain.max() - plain.min())).astype(np.float32)
        assert np.array_equal(entry, plain)

    for fname in ("sin", "cos"):
        with monkeypatch.context() as m:
            libm = getattr(math, fname)
            m.setattr(portable_math, fname, portable_math._elementwise(lambda v, libm=libm: libm(v) * (1 + 1e-4)))
            assert not np.array_equal(banks.generate_piece(spec, 1, 2)[0], entry), fname
