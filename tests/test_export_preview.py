"""What ``export`` and ``preview`` draw and describe, checked on small synthetic arrays (no build):
OME-Zarr label images that a strict NGFF validator accepts, and a preview whose title, aspect and
angle axis are true."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from simaq_factory.store.export import _write_ngff_image
from simaq_factory.store.preview import preview_figure

N = 32
CLASSES = {0: "background", 1: "cell", 2: "vacuole", 3: "lipid_droplet"}


def _labels() -> np.ndarray:
    zz, yy, xx = np.mgrid[:N, :N, :N]
    r2 = (zz - 16) ** 2 + (yy - 15) ** 2 + (xx - 17) ** 2
    lab = np.where(r2 < 100, 1, 0).astype(np.uint8)
    lab[r2 < 16] = 2
    lab[14:16, 18:20, 18:20] = 3
    return lab


def _label_image(tmp_path, nested: bool) -> dict:
    group = zarr.open_group(str(tmp_path / "l.ome.zarr"), mode="w", zarr_format=2)
    _write_ngff_image(group, "labels", _labels(), 40.0, is_label=True, classes=CLASSES, nested=nested)
    return dict(zarr.open_group(str(tmp_path / "l.ome.zarr"), mode="r", zarr_format=2).attrs)


@pytest.mark.parametrize("nested", [False, True])
def test_ome_zarr_label_colours_and_class_names_list_the_same_label_values(tmp_path, nested):
    """NGFF 0.4: ``colors`` and ``properties`` both describe the image's label values; ome-zarr-models
    rejected every exported label image (background named, but given no colour)."""
    il = _label_image(tmp_path, nested)["image-label"]
    colours = {c["label-value"]: c["rgba"] for c in il["colors"]}
    names = {p["label-value"]: p["class"] for p in il["properties"]}
    assert len(colours) == len(il["colors"]) and len(names) == len(il["properties"])  # no repeats
    assert sorted(colours) == sorted(names) == sorted(CLASSES)
    assert colours[0] == [0, 0, 0, 0]  # background transparent: a viewer shows the image under it
    assert all(len(c) == 4 and c[3] == 255 and all(0 <= v <= 255 for v in c) for k, c in colours.items() if k)


def test_ome_zarr_label_image_passes_the_ngff_validator(tmp_path):
    """The OME community's validator, where it is installed."""
    image_label = pytest.importorskip("ome_zarr_models.v04.image_label")
    _label_image(tmp_path, nested=False)
    image_label.ImageLabel.from_zarr(zarr.open_group(str(tmp_path / "l.ome.zarr"), mode="r"))


def _row_value(angles: np.ndarray) -> np.ndarray:
    return 20 + angles / 100


def _arrays(axes: int, angles: np.ndarray) -> dict[str, np.ndarray]:
    """One sample's arrays as the dataset stores them: ``axes`` reconstructions, and a NaN-padded
    angle list (the sinogram's padded rows NaN too); sinogram row i holds ``_row_value(angle i)``,
    line integrals of the size a projection has (their colour bar's tick labels shape the layout)."""
    lab = _labels()
    phantom = lab.astype(np.float32) * 0.2
    a_max = len(angles) + 3
    padded = np.full(a_max, np.nan, dtype=np.float32)
    padded[: len(angles)] = angles
    sino = np.full((a_max, N, N + 8), np.nan, dtype=np.float32)
    sino[: len(angles)] = _row_value(angles)[:, None, None]
    g = {"labels": lab, "phantom": phantom, "noisy": phantom + 0.01, "angles": padded, "sinogram": sino,
         "recon": phantom if axes == 1 else np.stack([phantom] * 3)}
    if axes == 3:
        g["angles"], g["sinogram"] = np.stack([padded] * 3), np.stack([sino] * 3)
    return {k: v[None] for k, v in g.items()}


def _drawn(fig):  # type: ignore[no-untyped-def]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # runs the layout, as savefig does
    return canvas.get_renderer()


EVEN = np.linspace(-39.2, 55.8, 20).astype(np.float32)


@pytest.mark.parametrize("axes, rows", [(1, 5), (3, 7)])
def test_preview_title_clears_every_panel_title(axes, rows):
    """tight_layout left no room for the figure's title: on a three-axis dataset's seven rows it was
    drawn over the first row's panel titles."""
    fig = preview_figure(_arrays(axes, EVEN), 0, "fbp", "ecc6f1edddb0" * 5)
    renderer = _drawn(fig)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 3 * rows - 1  # every image (not the angle text, not the colour bars)
    top = fig._suptitle.get_window_extent(renderer)
    for ax in panels:
        box = ax.title.get_window_extent(renderer)
        assert not top.overlaps(box), ax.get_title()
        assert box.y1 < top.y0, ax.get_title()


def _panel(fig, start: str):  # type: ignore[no-untyped-def]
    (ax,) = [ax for ax in fig.axes if ax.get_title().startswith(start)]
    return ax


def test_preview_projection_is_drawn_to_scale():
    """The projection is (z, detector) in voxels, as the slices: drawn with equal aspect (it was
    stretched to fill its box, a round cell drawn as an ellipse)."""
    fig = preview_figure(_arrays(1, EVEN), 0, "fbp", "r" * 64)
    _drawn(fig)
    ax = _panel(fig, "projection")
    assert ax.get_aspect() == 1.0
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert (abs(x1 - x0), abs(y1 - y0)) == (N + 8, N)  # the whole image, (z x detector)
    bbox = ax.get_window_extent()
    assert bbox.width / bbox.height == pytest.approx((N + 8) / N, rel=0.02)


@pytest.mark.parametrize("angles", [EVEN, np.array([-53.5, -51.5, -50.5, -49.5, -47.5, -46.5, -45.5, -44.5, -40.5,
                                                    -39.5, 0.5, 1.5, 2.5, 3.5, 5.5, 6.5, 43.5], np.float32)])
def test_preview_sinogram_rows_sit_at_their_recorded_angles(angles):
    """The sinogram's vertical axis is in degrees over the recorded angle range (it was ticked with row
    numbers), each projection's row drawn across its own angle and the angles left out empty (rows
    were drawn evenly spaced whatever the gaps)."""
    fig = preview_figure(_arrays(1, angles), 0, "fbp", "r" * 64)
    _drawn(fig)
    ax = _panel(fig, "sinogram")
    assert "deg" in ax.get_ylabel()
    (mesh,) = ax.collections
    coords = mesh.get_coordinates()  # (bands + 1, D + 1, 2): the band edges in degrees along axis 0
    edges = coords[:, 0, 1]
    values = mesh.get_array()  # (bands, D), masked where no projection was taken
    step = float(np.median(np.diff(angles)))
    lo, hi = float(angles.min()) - step / 2, float(angles.max()) + step / 2
    assert edges[0] == pytest.approx(lo) and edges[-1] == pytest.approx(hi)
    assert sorted(ax.get_ylim()) == pytest.approx([lo, hi])
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    labels = {t.get_position()[1]: t.get_text() for t in ax.get_yticklabels()}
    assert len(ticks) >= 3 and all(float(labels[t].replace("\N{MINUS SIGN}", "-")) == pytest.approx(t) for t in ticks)
    # every band with data spans exactly one recorded angle, and holds that angle's projection
    held = []
    for b in range(values.shape[0]):
        inside = angles[(angles >= edges[b]) & (angles < edges[b + 1])]
        if np.ma.getmaskarray(values[b]).all():
            assert inside.size == 0
            continue
        assert inside.size == 1 and np.allclose(values[b], _row_value(inside[0]))
        held.append(float(inside[0]))
    assert held == pytest.approx(sorted(angles.tolist()))
    # linear in angle: bands meet, and an empty band is as wide as the angles missing from it
    widths = np.diff(edges)
    assert np.all(widths > 0)
    assert np.ma.getmaskarray(values).all(axis=1).sum() == (np.diff(np.sort(angles)) > 1.5 * step).sum()


@pytest.mark.parametrize("axes", [1, 3])
def test_preview_title_names_the_frame_of_what_it_shows(axes):
    """One axis: z is the tilt axis. Three: each recon row is about its own axis (the title said
    'z = tilt axis' for all of them); the sinogram panel is axis z's."""
    title = preview_figure(_arrays(axes, EVEN), 0, "fbp", "r" * 64)._suptitle.get_text()
    if axes == 1:
        assert "(z = tilt axis; beam along y at 0 deg)" in title
    else:
        assert "three tilt axes" in title and "sinogram is axis z's" in title and "(z = tilt axis" not in title
    recon_rows = sorted({ax.get_title().split("  ")[0] for ax in preview_figure(
        _arrays(axes, EVEN), 0, "fbp", "r" * 64).axes if ax.get_title().startswith("recon")})
    assert recon_rows == (["recon (raw FBP)"] if axes == 1 else [f"recon, tilt axis {a}" for a in "xyz"])
