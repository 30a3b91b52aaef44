"""The optional Triton projector (:mod:`simaq_factory.tomo.kernels`, ``execution.projector``).

Its kernels are checked against the table path through Triton's CPU interpreter where Triton is
installed (``pip install triton``; it comes with CUDA builds of torch), in a subprocess because the
interpreter is chosen when Triton is first imported; on CUDA by ``tests/test_gpu.py``. The backend
choice, its errors and its plumbing through a sample are checked everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from simaq_factory.cli.main import main
from simaq_factory.pipeline import render_sample
from simaq_factory.recipe.io import load_recipe
from simaq_factory.tomo import projector
from simaq_factory.tomo.projector import check_backend, resolved_backend, use_kernels

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"
HAS_TRITON = importlib.util.find_spec("triton") is not None


def test_backend_names_and_places_are_checked():
    cpu = torch.zeros(3)
    assert not use_kernels("torch", cpu) and not use_kernels("auto", cpu)
    assert resolved_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="one of torch, triton, auto, got 'cuda'"):
        check_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="one of torch, triton, auto"):
        use_kernels("fast", cpu)
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        # with or without Triton, a CPU is not where the kernels run: said first (installing Triton
        # would not help)
        with pytest.raises(ValueError, match="runs on CUDA, not on cpu"):
            check_backend("triton", "cpu")


def test_backprojection_arguments_are_checked_before_either_backend():
    """The kernels would read past short inputs where the tables raised: both refuse them first."""
    from simaq_factory.tomo import Geometry
    from simaq_factory.tomo.projector import backproject_table

    geom = Geometry.from_degrees(8, [0.0, 45.0, 90.0, 135.0])
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match=r"\(A=4, Z, D\) tensor for this geometry, got \(6, 2, 8\)"):
            backproject_table(torch.zeros(6, 2, 8), geom, 3.5, clip_circle=True, backend=backend)
        with pytest.raises(ValueError, match=r"angle_weights must have shape \(4,\), got \(2,\)"):
            backproject_table(torch.zeros(4, 2, 8), geom, 3.5, clip_circle=True, angle_weights=torch.ones(2),
                              backend=backend)
    # no slices: an empty volume (the table path raised inside embedding_bag)
    assert backproject_table(torch.zeros(4, 0, 8), geom, 3.5, clip_circle=True).shape == (0, 8, 8)


def test_build_refuses_the_triton_projector_where_it_cannot_run(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(SMOKE), "-o", str(out), "--device", "cpu",
                                       "--projector", "triton"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --projector: "), result.stderr
    assert not out.exists()
    # set in the recipe (not by the flag), the refusal names the field
    result = CliRunner().invoke(main, ["build", str(SMOKE), "-o", str(out), "--device", "cpu",
                                       "--set", "execution.projector=triton"])
    assert result.exit_code == 2 and "error: execution.projector: " in result.stderr, result.output
    assert not out.exists()
    bad = CliRunner().invoke(main, ["validate", str(SMOKE), "--set", "execution.projector=astra"])
    assert bad.exit_code == 2 and "execution.projector" in bad.stderr, bad.output


def test_the_recipe_backend_reaches_both_projectors(monkeypatch):
    """``execution.projector`` is what the forward projection and FBP's backprojection are asked for."""
    asked: list[tuple[str, str]] = []
    real = projector.use_kernels

    def spy(backend: str, data: torch.Tensor) -> bool:
        asked.append((backend, tuple(data.shape)))
        return real(backend, data)

    monkeypatch.setattr(projector, "use_kernels", spy)
    recipe = load_recipe(SMOKE, ["execution.projector=auto"])
    render_sample(recipe, 0, torch.device("cpu"))
    n = recipe.dataset.shape[1]
    assert {b for b, _ in asked} == {"auto"}
    shapes = [s for _, s in asked]
    assert any(s[1:] == (n, n) for s in shapes)  # a (S, n, n) volume projected
    assert any(len(s) == 3 and s[1:] != (n, n) for s in shapes)  # an (A, S, D) stack backprojected


def _rows_geometry():
    """A 4096² geometry whose two rays (90°) run along pixel rows 4094 and 1, through pixel centres."""
    from simaq_factory.tomo import Geometry

    return Geometry.from_degrees(4096, [90.0], det_count=2, det_spacing=4093.0), [4094, 1]


def test_table_projector_indexes_exactly_at_4096():
    """Row 4094 of a 4096² slice is pixel index ~1.68e7 > 2^24: computed in float32 (as before) it
    rounded to a neighbour pixel."""
    geom, rows = _rows_geometry()
    vol = torch.rand((1, geom.n, geom.n), generator=torch.Generator().manual_seed(5))
    line = projector.forward_project(vol, geom)[0, 0]
    want = vol[0, rows].double().sum(dim=1)
    torch.testing.assert_close(line.double(), want, rtol=1e-5, atol=0)


_INTERPRETED = textwrap.dedent(r"""
    import json, math, sys
    import torch
    from simaq_factory.tomo import Geometry, fbp, kernels, projector
    from simaq_factory.tomo.projector import backproject_table, forward_project

    gen = torch.Generator().manual_seed(7)
    worst = {}
    cases = [
        # odd n, angles past 180 and negative, slices not a multiple of the 64-slice tile
        (Geometry.from_degrees(15, [-50.0, -12.5, 0.0, 33.0, 90.0, 181.0, 270.0]), 67),
        # a wider detector with a finer pitch, scikit-image's centre, weighted angles
        (Geometry.from_degrees(12, [0.0, 17.0, 45.0, 100.0, 135.0], det_count=21, det_spacing=0.7,
                               center="skimage", weighting="quadrature"), 3),
        # an off-centre rotation axis; 40 columns: two column tiles
        (Geometry.from_degrees(10, [5.0, 60.0, 120.0], det_count=40, det_spacing=0.3, center=4.25), 2),
    ]
    for k, (geom, z) in enumerate(cases):
        vol = torch.rand((z, geom.n, geom.n), generator=gen)
        ref = forward_project(vol, geom)
        got = forward_project(vol, geom, backend="triton")
        assert got.shape == ref.shape and got.dtype == torch.float32
        worst[f"forward{k}"] = float((got - ref).abs().max() / ref.abs().max())
        w = torch.linspace(0.5, 2.0, geom.n_angles)
        for clip in (True, False):
            a = backproject_table(ref, geom, geom.det_center + 1.5, clip_circle=clip, angle_weights=w)
            b = backproject_table(ref, geom, geom.det_center + 1.5, clip_circle=clip, angle_weights=w,
                                  backend="triton")
            worst[f"back{k}-{clip}"] = float((a - b).abs().max() / a.abs().max())
            if clip:  # outside the circle both leave 0
                assert torch.equal(a == 0, b == 0)
        r = fbp(ref, geom, filter="hann")
        worst[f"fbp{k}"] = float((fbp(ref, geom, filter="hann", backend="triton") - r).abs().max() / r.abs().max())
    # other tiles (kernels.TILES: what bench_projector.py --triton-tiles tries), same numbers
    default_tiles = dict(kernels.TILES)
    kernels.TILES.update(forward=(16, 32, 2), backprojection=(8, 16, 1))
    geom, z = cases[0]
    vol = torch.rand((z, geom.n, geom.n), generator=gen)
    ref = forward_project(vol, geom)
    worst["forward-tiles"] = float((forward_project(vol, geom, backend="triton") - ref).abs().max() / ref.abs().max())
    r = fbp(ref, geom)
    worst["fbp-tiles"] = float((fbp(ref, geom, backend="triton") - r).abs().max() / r.abs().max())
    kernels.TILES.update(default_tiles)
    # same input, same bits: each element is summed in a fixed order
    vol = torch.rand((z, geom.n, geom.n), generator=gen)
    assert torch.equal(forward_project(vol, geom, backend="triton"), forward_project(vol, geom, backend="triton"))
    # n = 4096: a ray across the corner x + y ≈ 8188 (pixel indices past 2^24; a few samples, so the
    # interpreter is quick), as the tables (exact there)
    big = Geometry.from_degrees(4096, [135.0], det_count=2, det_spacing=5788.8)
    vol = torch.rand((1, big.n, big.n), generator=gen)
    ref = forward_project(vol, big)
    assert ref[0, 0, 0] > 0
    worst["rows-4096"] = float((forward_project(vol, big, backend="triton") - ref).abs().max() / ref.abs().max())
    check = kernels.self_check.__wrapped__
    good = check("cpu")
    # a kernel that is wrong is caught by the self-check, and "triton" refuses to run with it
    real = kernels.forward_project
    kernels.forward_project = lambda v, g: real(v, g) * 1.001
    bad = check("cpu")
    kernels.self_check = lambda device: bad
    try:
        projector.use_kernels("triton", vol)
        refused = ""
    except projector.KernelCheckFailed as exc:
        refused = str(exc)
    print(json.dumps({"worst": worst, "good": good, "bad": bad, "refused": refused,
                      "resolved": projector.resolved_backend("auto", torch.device("cpu"))}))
""")


@pytest.mark.slow  # 28 s in Triton's interpreter: the GPU kernels' numbers (run with -m slow, and on a GPU)
@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (pip install triton)")
def test_kernels_compute_the_table_projectors_numbers_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    run = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # float rounding only: the two paths interpolate the same samples with the same weights
    assert max(result["worst"].values()) < 2e-6, result["worst"]
    assert len(result["worst"]) == 15
    assert result["good"] == ""
    assert result["bad"].startswith("its forward differs from the torch projector by 0.001"), result["bad"]
    assert "failed its self-check" in result["refused"] and "execution.projector: torch" in result["refused"]
    assert result["resolved"] == "torch"  # auto keeps CPU tensors on the table path, even interpreting


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton (pip install triton)")
def test_kernels_compile_for_ampere_and_hopper_with_vector_loads():
    """What the interpreter cannot show: both kernels go through Triton's GPU compiler (to PTX and
    a cubin, no GPU needed), and each tap's tile of slices is read with 16-byte vector loads."""
    from simaq_factory.tomo import kernels

    import triton

    if kernels.interpreting():
        pytest.skip("TRITON_INTERPRET is set: Triton compiles nothing")
    if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 3):
        pytest.skip(f"compile_for is written against Triton >= 3.3's ASTSource, this is {triton.__version__}")
    for arch in (80, 90):
        ptx = kernels.compile_for(arch)
        assert set(ptx) == {"forward", "backprojection"}
        for name, text in ptx.items():
            assert f".target sm_{arch}" in text, name
            # 4 taps (forward) or 2 (backprojection) × 64 slices × 32 columns / 128 threads / 4 per load
            assert text.count("ld.global.v4.b32") >= {"forward": 16, "backprojection": 8}[name], name
