"""Optional adapters to other projectors: ASTRA Toolbox and torch-radon (design §8).

Neither package is a dependency (``pip install simaq-factory[astra]`` adds ASTRA; torch-radon is not
on PyPI). Each function imports its package when called and raises :class:`BackendUnavailable`
(an ``ImportError``) naming the package when it is missing. All take and return our layout and
units — volumes (Z, Y, X) with Z the rotation axis, projections (A, Z, D) of line integrals in voxel
lengths — and honour the :class:`~simaq_factory.tomo.geometry.Geometry`, so their results can be
compared with :func:`~simaq_factory.tomo.forward_project` and :func:`~simaq_factory.tomo.fbp`.
A NumPy input gives a float32 NumPy result; a torch tensor gives a tensor on its device and dtype.

Mapping onto ASTRA's 2D ``parallel`` geometry (one slice at a time; ASTRA's CPU build has no 3D):

* angles: the same numbers. ASTRA's ray at angle θ runs along (sin θ, −cos θ) with the detector
  along (cos θ, sin θ) in world (x, y), y pointing to row 0; in pixel indices that is our
  ``x = c + t·cosθ``, ``y = c − t·sinθ`` (geometry.py), so no sign flip is needed.
* rotation centre: ASTRA's axis is the world origin, the centre of the volume window. The window is
  placed so the origin sits on pixel index ``c`` (:attr:`Geometry.image_center`): ``(n − 1)/2``
  ("astra") is ASTRA's default window, ``n // 2`` ("skimage") shifts it by half a voxel.
* detector: ``det_count`` columns of width ``det_spacing``. ASTRA images the axis on the middle
  column; when :attr:`Geometry.det_center` is half or whole columns off it (the "skimage" centre:
  half a column), the detector is padded with zero columns on one side so that it is the middle.
* FBP: ASTRA's filters ``ram-lak``, ``shepp-logan``, ``cosine``, ``hamming`` and ``hann`` (defined
  in the frequency domain; ours builds the ramp in the spatial domain like scikit-image, so the two
  differ slightly at the lowest frequencies). ASTRA weights every projection by ``π/(2A)``
  (``pi_over_2A``); ``quadrature`` weighting is applied by pre-scaling each projection by
  ``w_a / (π/(2A))``. ``clip_circle`` zeroes outside radius ``n // 2`` afterwards, as ours does.
* ASTRA's CUDA algorithms are used only when the input tensor is on a CUDA device and
  ``astra.use_cuda()`` says a GPU works (ASTRA's CUDA calls can kill a GPU-less interpreter).

torch-radon (v1 ``Radon`` or the maintained fork's ``ParallelBeam``) is CUDA-only and uses the
``(n − 1)/2`` centre with ``det_count = n``-style detectors; it negates angles internally to match
ASTRA and scikit-image, so angles pass through unchanged. Its FBP here is our filter
(:func:`~simaq_factory.tomo.filters.filter_projections`) and our per-angle weights followed by
torch-radon's plain (unweighted) backprojection.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
import torch

from simaq_factory.tomo.geometry import Geometry

__all__ = [
    "ASTRA_FILTERS",
    "ASTRA_PROJECTORS",
    "BackendUnavailable",
    "astra_available",
    "astra_fbp",
    "astra_forward",
    "torch_radon_available",
    "torch_radon_fbp",
    "torch_radon_forward",
]

#: Filters ASTRA's FBP implements under the same names as ours (our aliases, e.g. ``ramp`` for
#: ``ram-lak``, are taken too: :func:`astra_fbp`).
ASTRA_FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")
#: ASTRA's 2D CPU projectors for a parallel geometry (``astra_forward``'s ``projector``).
ASTRA_PROJECTORS = ("linear", "strip", "line")

_A = TypeVar("_A", torch.Tensor, np.ndarray)


class BackendUnavailable(ImportError):
    """An optional projector backend is not installed (or cannot run here)."""


# ----------------------------------------------------------------------------------------- helpers
def _import_astra() -> Any:
    try:
        import astra
    except ImportError as err:
        raise BackendUnavailable(
            "the ASTRA adapter needs astra-toolbox: pip install 'simaq-factory[astra]' "
            f"(or astra-toolbox>=2.5) ({err})"
        ) from None
    return astra


def astra_available() -> bool:
    """True when astra-toolbox imports."""
    try:
        _import_astra()
    except BackendUnavailable:
        return False
    return True


def _as_numpy(a: torch.Tensor | np.ndarray, ndim: int, what: str) -> np.ndarray:
    arr = a.detach().to("cpu", torch.float32).numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if arr.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _like(out: np.ndarray, ref: _A) -> _A:
    if isinstance(ref, torch.Tensor):
        return torch.from_numpy(out).to(device=ref.device, dtype=ref.dtype)
    return out


def _use_astra_cuda(astra: Any, data: torch.Tensor | np.ndarray) -> bool:
    return isinstance(data, torch.Tensor) and data.device.type == "cuda" and bool(astra.use_cuda())


def _astra_geometries(astra: Any, geom: Geometry) -> tuple[dict[str, Any], dict[str, Any], int]:
    """ASTRA 2D (volume, projection) geometries equivalent to ``geom``, and the detector padding.

    ASTRA images its axis on the middle column of a ``parallel`` detector; ours sits at
    :attr:`Geometry.det_center`, which may be off the middle by a whole or half column (the
    "skimage" centre puts it half a column right). Such a detector is given to ASTRA with
    ``|pad|`` extra columns — on the right for ``pad > 0``, on the left for ``pad < 0`` — so its
    middle is our axis column; other offsets are refused (``ValueError``).
    """
    n, c = geom.n, geom.image_center
    # world origin (ASTRA's axis) at pixel index c: x of column j is min_x + j + 0.5, y of row i
    # is max_y − i − 0.5
    vol = astra.create_vol_geom(n, n, -(c + 0.5), n - (c + 0.5), (c + 0.5) - n, c + 0.5)
    det = geom.detectors
    twice = 2.0 * (geom.det_center - (det - 1) / 2.0)
    pad = int(round(twice))
    if abs(twice - pad) > 1e-6:
        raise ValueError("ASTRA adapter: the rotation axis must image on a whole or half detector column, "
                         f"got column {geom.det_center} of {det}")
    angles = np.asarray(geom.angles, dtype=np.float64)
    return vol, astra.create_proj_geom("parallel", geom.det_spacing, det + abs(pad), angles), pad


def _pad_columns(p: np.ndarray, pad: int) -> np.ndarray:
    if pad == 0:
        return p
    widths = [(0, 0)] * (p.ndim - 1) + [(0, pad) if pad > 0 else (-pad, 0)]
    return np.pad(p, widths)


def _crop_columns(p: np.ndarray, pad: int) -> np.ndarray:
    if pad == 0:
        return p
    return p[..., : p.shape[-1] - pad] if pad > 0 else p[..., -pad:]


def _astra_run(astra: Any, cfg: dict[str, Any], slices: np.ndarray, in_id: int, out_id: int,
               out: np.ndarray) -> None:
    """Run one ASTRA algorithm per slice: ``slices[z]`` in, ``out[z]`` back."""
    cfg = dict(cfg)
    alg = astra.algorithm.create(cfg)
    try:
        for z in range(slices.shape[0]):
            astra.data2d.store(in_id, slices[z])
            astra.algorithm.run(alg)
            out[z] = astra.data2d.get_shared(out_id)
    finally:
        astra.algorithm.delete(alg)


# ------------------------------------------------------------------------------------------ ASTRA
def astra_forward(volume: _A, geom: Geometry, *, projector: str = "linear") -> _A:
    """Line integrals of a (Z, Y, X) volume through ASTRA: (A, Z, D), like ``forward_project``.

    ``projector`` is ASTRA's CPU projector: ``linear`` (Joseph, interpolating — the closest to
    ours), ``strip`` (area-weighted) or ``line``; the CUDA path always uses ASTRA's GPU projector.
    Another name is a ``ValueError`` (checked before ASTRA is imported).
    """
    if projector not in ASTRA_PROJECTORS:  # ASTRA's own error came after its data objects were made
        raise ValueError(f"projector must be one of {', '.join(ASTRA_PROJECTORS)}, got {projector!r}")
    astra = _import_astra()
    vol = _as_numpy(volume, 3, "volume")
    if vol.shape[1:] != (geom.n, geom.n):
        raise ValueError(f"volume slices must be {geom.n}×{geom.n}, got {vol.shape[1:]}")
    vol_geom, proj_geom, pad = _astra_geometries(astra, geom)
    z = vol.shape[0]
    out = np.empty((z, geom.n_angles, geom.detectors + abs(pad)), dtype=np.float32)
    vid = astra.data2d.create("-vol", vol_geom, 0.0)
    sid = astra.data2d.create("-sino", proj_geom, 0.0)
    pid = None
    try:
        if _use_astra_cuda(astra, volume):
            cfg = astra.astra_dict("FP_CUDA")
        else:
            pid = astra.create_projector(projector, proj_geom, vol_geom)
            cfg = astra.astra_dict("FP")
            cfg["ProjectorId"] = pid
        cfg["ProjectionDataId"], cfg["VolumeDataId"] = sid, vid
        _astra_run(astra, cfg, vol, vid, sid, out)
    finally:
        astra.data2d.delete([vid, sid])
        if pid is not None:
            astra.projector.delete(pid)
    return _like(np.ascontiguousarray(_crop_columns(out, pad).transpose(1, 0, 2)), volume)


def astra_fbp(proj: _A, geom: Geometry, filter: str = "ram-lak", *, clip_circle: bool = True) -> _A:
    """FBP of an (A, Z, D) projection stack through ASTRA: (Z, Y, X), like :func:`~simaq_factory.tomo.fbp`.

    ``filter`` is one of :data:`ASTRA_FILTERS`, or an alias :func:`~simaq_factory.tomo.fbp` takes
    for one (``ramp``, ``ramlak``, ``ram_lak``, ``shepp_logan``); another is a ``ValueError``
    (checked before ASTRA is imported). ``geom.weighting`` is honoured (module docstring).
    """
    astra_filter = _astra_filter(filter)
    astra = _import_astra()
    p = _as_numpy(proj, 3, "projections")
    if p.shape[0] != geom.n_angles or p.shape[2] != geom.detectors:
        raise ValueError(f"projections must be (A={geom.n_angles}, Z, D={geom.detectors}), got {p.shape}")
    if geom.weighting != "pi_over_2A":
        # ASTRA weights every projection by π/(2A); rescale so the effective weight is ours
        scale = geom.angle_weights() / (math.pi / (2 * geom.n_angles))
        p = p * scale[:, None, None].astype(np.float32)
    vol_geom, proj_geom, pad = _astra_geometries(astra, geom)
    sinos = np.ascontiguousarray(_pad_columns(p.transpose(1, 0, 2), pad))  # (Z, A, D'): one per slice
    out = np.empty((sinos.shape[0], geom.n, geom.n), dtype=np.float32)
    vid = astra.data2d.create("-vol", vol_geom, 0.0)
    sid = astra.data2d.create("-sino", proj_geom, 0.0)
    pid = None
    try:
        if _use_astra_cuda(astra, proj):
            cfg = astra.astra_dict("FBP_CUDA")
        else:
            pid = astra.create_projector("linear", proj_geom, vol_geom)
            cfg = astra.astra_dict("FBP")
            cfg["ProjectorId"] = pid
        cfg["ProjectionDataId"], cfg["ReconstructionDataId"] = sid, vid
        cfg["option"] = {"FilterType": astra_filter}
        _astra_run(astra, cfg, sinos, sid, vid, out)
    finally:
        astra.data2d.delete([vid, sid])
        if pid is not None:
            astra.projector.delete(pid)
    if clip_circle:
        out *= _circle(geom)[None]
    return _like(out, proj)


def _astra_filter(name: str) -> str:
    """ASTRA's name of our FBP filter ``name`` (its canonical name: ``ramp`` is ``ram-lak``)."""
    from simaq_factory.tomo.filters import _ALIASES

    key = _ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in ASTRA_FILTERS:
        raise ValueError(f"ASTRA has no filter {name!r}; choose one of {', '.join(ASTRA_FILTERS)} "
                         f"(or an alias: {', '.join(k for k, v in _ALIASES.items() if v in ASTRA_FILTERS)})")
    return key


def _circle(geom: Geometry) -> np.ndarray:
    """Bool (n, n): inside the reconstruction circle (radius ``n // 2`` about the axis)."""
    r = np.arange(geom.n, dtype=np.float64) - geom.image_center
    return (r[:, None] ** 2 + r[None, :] ** 2) <= geom.circle_radius**2


# ------------------------------------------------------------------------------------- torch-radon
def _import_torch_radon() -> Any:
    try:
        import torch_radon
    except ImportError as err:
        raise BackendUnavailable(
            "the torch-radon adapter needs torch-radon (CUDA only; not on PyPI: build "
            f"matteo-ronchetti/torch-radon or install the conda-forge fork) ({err})"
        ) from None
    return torch_radon


def torch_radon_available() -> bool:
    """True when torch_radon imports."""
    try:
        _import_torch_radon()
    except BackendUnavailable:
        return False
    return True


def _torch_radon_op(geom: Geometry) -> Any:
    tr = _import_torch_radon()
    if abs(geom.image_center - (geom.n - 1) / 2.0) > 1e-9:
        raise ValueError("torch-radon rotates about (n - 1)/2 only: use center='astra'")
    angles = np.asarray(geom.angles, dtype=np.float32)
    if hasattr(tr, "ParallelBeam"):  # the maintained fork (2.x)
        return tr.ParallelBeam(geom.detectors, angles, det_spacing=geom.det_spacing,
                               volume=tr.Volume2D((geom.n, geom.n)))
    return tr.Radon(geom.n, angles, det_count=geom.detectors, det_spacing=geom.det_spacing,
                    clip_to_circle=False)


def _on_cuda(t: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.device.type != "cuda":
        raise ValueError(f"torch-radon needs {what} as a CUDA tensor")
    return t.float().contiguous()


def torch_radon_forward(volume: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """Line integrals of a CUDA (Z, Y, X) volume through torch-radon: (A, Z, D)."""
    op = _torch_radon_op(geom)
    sino = op.forward(_on_cuda(volume, "the volume"))  # (Z, A, D)
    return sino.permute(1, 0, 2).contiguous().to(volume.dtype)


def torch_radon_fbp(proj: torch.Tensor, geom: Geometry, filter: str = "ram-lak", *,
                    clip_circle: bool = True) -> torch.Tensor:
    """FBP of a CUDA (A, Z, D) stack: our filter and angle weights, torch-radon's backprojection."""
    from simaq_factory.tomo.filters import filter_projections

    op = _torch_radon_op(geom)
    p = _on_cuda(proj, "the projections")
    filtered = filter_projections(p, filter) / geom.det_spacing
    weights = torch.as_tensor(geom.angle_weights(), dtype=filtered.dtype, device=filtered.device)
    filtered = filtered * weights[:, None, None]
    back = getattr(op, "backward", None) or op.backprojection
    vol = back(filtered.permute(1, 0, 2).contiguous())
    if clip_circle:
        vol = vol * torch.as_tensor(_circle(geom), device=vol.device)
    return vol.to(proj.dtype)
