"""simaq_train data: windows, epoch plans (determinism, exact coverage over rank × worker grids,
resume), background dropping, normalisation, three-axis datasets, real tomograms and mixing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import zarr

import simaq_train.data.stream as stream_mod
from simaq_factory.errors import BadInput
from simaq_train.config import AugmentConfig, config_from_dict
from simaq_train.data.augment import augment
from simaq_train.data.build import build_stream, resolve_classes
from simaq_train.data.normalize import fov_mask, quantile_normalize
from simaq_train.data.sources import (
    FactorySource,
    RealSource,
    dataset_hash,
    find_pairs,
    infer_n_classes,
    read_annotation,
    slice_index,
)
from simaq_train.data.stream import window_indices
from simaq_train.data.volumes import read_volume, write_volume
from simaq_train.testing import InMemoryVolumes, write_synthetic_dataset

SHAPE = (16, 32, 32)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("syn") / "ds", n_samples=6, shape=SHAPE, seed=3)


def make_cfg(train: list[Path], **over) -> object:
    tree: dict = {"seed": 11, "data": {"train": [str(p) for p in train], "background_drop": 0.5,
                                       "shuffle_volumes": 2},
                  "model": {"init_features": 4, "depth": 3}, "optim": {"batch_size": 4},
                  "augment": {"enable": False}}
    for key, value in over.items():
        node = tree
        *parts, last = key.split(".")
        for p in parts:
            node = node.setdefault(p, {})
        node[last] = value
    return resolve_classes(config_from_dict(tree))


def stream_for(cfg, rank: int = 0, world: int = 1):
    return build_stream(cfg, rank, world)[0]


def plan_rows(plan: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(plan) if plan else np.zeros(0, np.int64)


# --- windows and normalisation ------------------------------------------------------------------

def test_window_indices_pad_the_ends():
    assert window_indices(0, 5, 7, "reflect").tolist() == [3, 2, 1, 0, 1, 2, 3]
    assert window_indices(4, 5, 7, "reflect").tolist() == [1, 2, 3, 4, 3, 2, 1]
    assert window_indices(0, 5, 7, "replicate").tolist() == [0, 0, 0, 0, 1, 2, 3]
    assert window_indices(2, 5, 3, "skip").tolist() == [1, 2, 3]
    assert window_indices(0, 1, 3, "reflect").tolist() == [0, 0, 0]


def test_quantile_normalisation_is_deterministic_rank_based_and_tie_aware():
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, size=(4, 40, 40)).astype(np.float32)
    vol[0, 20, 20] = vol[1, 20, 21] = 7.0  # a tie
    a = quantile_normalize(vol, margin=2)
    b = quantile_normalize(vol.astype(np.float64) * 3 + 1, margin=2)  # any monotone map: same output
    assert np.array_equal(a, b) and a.dtype == np.float32
    disc = fov_mask((40, 40), 2)
    assert np.all(a[:, ~disc] == 0)
    inside = a[:, disc]
    assert abs(inside.mean()) < 1e-3 and abs(inside.std() - 1) < 0.05
    assert a[0, 20, 20] == a[1, 20, 21]
    order = np.argsort(vol[:, disc].ravel(), kind="stable")
    assert np.all(np.diff(inside.ravel()[order]) >= 0)  # monotone
    ints = quantile_normalize((vol * 100).astype(np.uint16), margin=2)  # integer tomograms work
    assert np.isfinite(ints).all() and ints[:, disc].std() > 0.9


# --- epoch plans ---------------------------------------------------------------------------------

def test_plan_is_a_pure_function_of_seed_and_epoch(ds):
    s1, s2 = stream_for(make_cfg([ds])), stream_for(make_cfg([ds]))
    p1, p2 = s1.plan(0), s2.plan(0)
    assert len(p1) == len(p2) and all(np.array_equal(a, b) for a, b in zip(p1, p2))
    assert not np.array_equal(plan_rows(s1.plan(1)), plan_rows(p1))
    other = stream_for(make_cfg([ds], seed=12)).plan(0)
    assert not np.array_equal(plan_rows(other), plan_rows(p1))
    # the augmented batches themselves are reproducible too
    cfg = make_cfg([ds], **{"augment.enable": True})
    b1 = next(iter(stream_for(cfg)))
    b2 = next(iter(stream_for(cfg)))
    assert torch.equal(b1["image"], b2["image"]) and torch.equal(b1["target"], b2["target"])


def _yielded(stream, nw: int, monkeypatch) -> list[list[int]]:
    """Plan indices each DataLoader worker of ``stream`` would yield."""
    out = []
    stream.make_batch = lambda rows, epoch, j: j  # type: ignore[method-assign]
    for w in range(nw):
        monkeypatch.setattr(stream_mod, "get_worker_info", lambda w=w: SimpleNamespace(id=w, num_workers=nw))
        out.append(list(iter(stream)))
    return out


@pytest.mark.parametrize("drop", [0.0, 1.0])
def test_every_window_exactly_once_over_rank_worker_grids(ds, drop, monkeypatch):
    base = stream_for(make_cfg([ds], **{"data.background_drop": drop}))
    table, bg = base.table, base.bg
    expected = np.arange(len(table)) if drop == 0.0 else np.nonzero(~bg)[0]
    assert 0 < len(expected) < len(table) or drop == 0.0
    for world in (1, 2, 3):
        for nw in (1, 2, 3):
            seen, per_rank = [], []
            for rank in range(world):
                st = stream_for(make_cfg([ds], **{"data.background_drop": drop}), rank, world)
                plan = st.plan()
                js = _yielded(st, nw, monkeypatch)
                flat = sorted(j for w in js for j in w)
                assert flat == list(range(rank, len(plan), world))  # workers split the rank's batches
                # the in-order DataLoader interleaves workers round-robin: plan order
                inter = [js[k % nw][k // nw] for k in range(len(flat))]
                assert inter == flat
                per_rank.append(len(flat))
                seen += [int(r) for j in flat for r in plan[j]]
            assert len(set(per_rank)) == 1, per_rank  # ranks stay in step
            assert sorted(seen) == sorted(expected.tolist()), (world, nw)


def test_real_dataloader_workers_cover_every_window_once_and_match_in_process_batches(ds):
    """Spawned DataLoader workers (2 ranks x 2 workers): same batches, bytes and order as in-process."""
    from torch.utils.data import DataLoader

    cfg = make_cfg([ds], **{"augment.enable": True})
    kept = plan_rows(stream_for(cfg).plan(0))  # the windows this epoch keeps (background_drop 0.5)
    seen = []
    for rank in range(2):
        st = stream_for(cfg, rank, 2)
        ref = list(iter(st))
        got = list(DataLoader(st, batch_size=None, num_workers=2, multiprocessing_context="spawn"))
        assert [int(b["index"]) for b in got] == [b["index"] for b in ref] == list(range(rank, len(st.plan()), 2))
        for a, b in zip(got, ref):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
            seen += st.plan()[b["index"]].tolist()
    assert sorted(seen) == sorted(kept.tolist()) and len(set(seen)) == len(seen)


def test_world_split_repeats_only_when_the_tail_is_tiny(ds):
    cfg = make_cfg([ds], **{"data.background_drop": 1.0, "optim.batch_size": 5})
    st = stream_for(cfg)
    n = len(plan_rows(st.plan()))
    world = 4
    plans = stream_mod.epoch_plan(st.table, st.bg, None, cfg, 0, world)
    assert len(plans) % world == 0 and sorted(plan_rows(plans).tolist()) == sorted(plan_rows(st.plan()).tolist())
    assert n >= world


def test_resume_from_state_yields_the_remaining_batches(ds):
    cfg = make_cfg([ds], **{"augment.enable": True})
    full = list(iter(stream_for(cfg)))
    assert len(full) >= 4
    resumed = stream_for(cfg)
    resumed.load_state_dict({"epoch": 0, "position": 3})
    assert resumed.state_dict() == {"epoch": 0, "position": 3} and len(resumed) == len(full) - 3
    rest = list(iter(resumed))
    assert [b["index"] for b in rest] == [b["index"] for b in full[3:]]
    for a, b in zip(rest, full[3:]):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
    two = stream_for(cfg, rank=1, world=2)
    with pytest.raises(ValueError):
        two.set_state(0, 3)  # positions are multiples of the world size


def test_background_drop_rate(tmp_path):
    dsb = write_synthetic_dataset(tmp_path / "bg", n_samples=4, shape=(24, 32, 32), empty_margin=8, seed=5)
    for p in (0.5, 0.98):
        st = stream_for(make_cfg([dsb], **{"data.background_drop": p}))
        n_bg = int(st.bg.sum())
        assert n_bg >= 40
        kept = [np.isin(np.nonzero(st.bg)[0], plan_rows(st.plan(e))).sum() for e in range(40)]
        rate = 1 - np.sum(kept) / (40 * n_bg)
        sd = np.sqrt(p * (1 - p) / (40 * n_bg))
        assert abs(rate - p) < 4 * sd + 1e-3, (p, rate)
        fg_rows = np.nonzero(~st.bg)[0]
        assert np.isin(fg_rows, plan_rows(st.plan(0))).all()  # foreground windows are never dropped


def test_augment_is_joint_and_explicitly_seeded():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (8, 8)).astype(np.uint8)
    image = np.stack([labels.astype(np.float32)] * 3)
    cfg = AugmentConfig(flip=0.5, rot90=0.5, intensity=0.0, elastic_prob=0.0, resized_crop_prob=0.0,
                        blur_prob=0.0)  # exact moves only (the resampling ops: test_augment_ops.py)
    outs = set()
    for seed in range(20):
        img, lab = augment(image, labels, np.random.default_rng(seed), cfg)
        assert np.array_equal(img[1], lab.astype(np.float32))  # image and labels move together
        again = augment(image, labels, np.random.default_rng(seed), cfg)
        assert np.array_equal(again[0], img)
        outs.add(lab.tobytes())
    assert len(outs) > 4
    noisy, _ = augment(image, labels, np.random.default_rng(1), AugmentConfig(intensity=1.0))
    assert not np.array_equal(noisy, image)


# --- datasets ------------------------------------------------------------------------------------

def test_three_axis_dataset_reads_each_acquisition_in_its_frame(tmp_path):
    shape = (32, 32, 32)
    d3 = write_synthetic_dataset(tmp_path / "tri", n_samples=2, shape=shape, tilt_axes=[0, 1, 2], seed=9)
    g = zarr.open_group(d3 / "dataset.zarr", mode="r")
    recon, labels, card = g["recon"][...], g["labels"][...], dict(g.attrs)
    assert recon.shape == (2, 3, *shape)
    src = FactorySource(d3, n_classes=4, fov_margin=2)
    assert len(src) == 6 and src.tilt_axes == [0, 1, 2]
    assert src.perms == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    for v in range(len(src)):
        s, a = src.locate(v)
        perm = card["axis_frames"][a]["permutation"]
        img, lab = src.load(v)
        want_img = quantile_normalize(np.transpose(recon[s, a], perm), 2)
        want_lab = np.where(fov_mask(shape[1:], 2)[None], np.transpose(labels[s], perm), 255)
        assert np.array_equal(img, want_img) and np.array_equal(lab, want_lab)
    # the slice flags, read serially or on threads, are those of each volume in order, as load gives them
    import simaq_train.data.sources as sources_mod

    serial = src.index()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sources_mod, "INDEX_THREADS_MIN_VOXELS", 0)
        threaded = src.index()
    assert len(serial) == len(threaded) == len(src)
    for v in range(len(src)):
        want = slice_index(src.load(v)[1])
        for flags in (serial[v], threaded[v]):
            assert np.array_equal(flags.labelled, want.labelled) and np.array_equal(flags.foreground, want.foreground)
    # the arrays opened for loading stay in this process: a DataLoader worker opens its own
    import pickle

    assert set(src._arrays) == {"labels", "recon"}
    clone = pickle.loads(pickle.dumps(src))
    assert clone._arrays == {} and np.array_equal(clone.load(5)[0], src.load(5)[0])
    first = FactorySource(d3, n_classes=4, axes="first")
    assert len(first) == 2
    st = stream_for(make_cfg([d3]))
    assert set(st.table[:, 1].tolist()) == set(range(6))  # windows from every axis of every sample
    # cards without axis_frames mean the format's cyclic frames; malformed ones are refused
    gw = zarr.open_group(d3 / "dataset.zarr", mode="r+")
    del gw.attrs["axis_frames"]
    assert FactorySource(d3, n_classes=4).perms == src.perms
    gw.attrs["axis_frames"] = [{"permutation": [0, 1, 2]}, {"permutation": [1, 0, 2]}, {"permutation": [0, 2, 1]}]
    with pytest.raises(BadInput, match=r"axis_frames\[2\]\.permutation"):
        FactorySource(d3, n_classes=4)


def test_single_axis_card_without_tilt_axes_means_axis_zero(ds):
    src = FactorySource(ds, n_classes=4)
    assert src.tilt_axes == [0] and len(src) == 6 and infer_n_classes(ds) == 4


def test_bad_datasets_are_named(tmp_path, ds):
    with pytest.raises(BadInput, match="no dataset.zarr"):
        FactorySource(tmp_path / "nowhere", n_classes=4)
    bad = write_synthetic_dataset(tmp_path / "v2", n_samples=1, shape=SHAPE)
    g = zarr.open_group(bad / "dataset.zarr", mode="r+")
    g.attrs["schema_version"] = 2
    with pytest.raises(BadInput, match="schema_version"):
        FactorySource(bad, n_classes=4)
    g.attrs.update({"schema_version": 1, "status": "incomplete"})
    with pytest.raises(BadInput, match="incomplete"):
        FactorySource(bad, n_classes=4)
    with pytest.raises(BadInput, match="label value 3 >= model.out_channels=3"):
        FactorySource(ds, n_classes=3).index()
    with pytest.raises(BadInput, match=r"labels\[0\]: label value 3 >= model.out_channels=3"):
        FactorySource(ds, n_classes=3).load(0)  # reading a volume checks its labels too
    with pytest.raises(BadInput, match="nowhere: not a simaq-factory dataset"):
        build_stream(make_cfg([ds, tmp_path / "nowhere"]))


def test_unfrozen_dataset_is_warned_about_once(tmp_path, caplog):
    ds = write_synthetic_dataset(tmp_path / "u", n_samples=1, shape=SHAPE, frozen=False)
    for _ in range(3):
        FactorySource(ds, n_classes=4)
    dataset_hash(ds)
    assert sum("is not frozen" in m for m in caplog.messages) == 1


# --- real tomograms ------------------------------------------------------------------------------

def _real_volume(rng: np.random.Generator, shape=(12, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    tomo = (rng.normal(100, 10, shape)).astype(np.uint16)
    ann = np.full(shape, 255, np.uint8)
    ann[4:8, 10:14, 10:14] = 1
    ann[4:8, 2:4, 14:18] = 0
    ann[6, 12, 12] = 3
    return tomo, ann


def test_real_readers_tiff_mrc_nrrd_and_annotations(tmp_path):
    import mrcfile
    import nrrd
    import tifffile

    rng = np.random.default_rng(1)
    tomo, ann = _real_volume(rng)
    tifffile.imwrite(tmp_path / "a.tif", tomo)
    with mrcfile.new(tmp_path / "b.mrc") as f:
        f.set_data(tomo.astype(np.float32))
    nrrd.write(str(tmp_path / "c.nrrd"), tomo, index_order="C")
    for name in ("a.tif", "b.mrc", "c.nrrd"):
        assert np.array_equal(read_volume(tmp_path / name), tomo), name
    names = ["background", "cell", "vacuole", "lipid_droplet"]
    # plain annotation volumes: class ids, 255 unlabelled; MRC mode 0 (int8) reads back as uint8
    tifffile.imwrite(tmp_path / "a.labels.tif", ann)
    with mrcfile.new(tmp_path / "b.labels.mrc") as f:
        f.set_data(ann.view(np.int8))
    for name in ("a.labels.tif", "b.labels.mrc"):
        assert np.array_equal(read_annotation(str(tmp_path / name), ann.shape, names), ann), name
    # 3D Slicer: 0 = unlabelled, value v -> class v - 1 (the reference's convention) ...
    slicer = np.where(ann == 255, 0, ann.astype(np.int32) + 1).astype(np.uint8)
    nrrd.write(str(tmp_path / "c.seg.nrrd"), slicer, index_order="C")
    assert np.array_equal(read_annotation(str(tmp_path / "c.seg.nrrd"), ann.shape, names), ann)
    # ... or by segment name when every segment is named after a class
    named = np.where(ann == 255, 0, np.array([7, 5, 0, 6], np.uint8)[np.minimum(ann, 3)])
    header = {"Segment0_Name": "Background", "Segment0_LabelValue": "7", "Segment0_Layer": "0",
              "Segment1_Name": "membrane", "Segment1_LabelValue": "5", "Segment1_Layer": "0",
              "Segment2_Name": "Lipid droplet", "Segment2_LabelValue": "6", "Segment2_Layer": "0"}
    nrrd.write(str(tmp_path / "named.seg.nrrd"), named, header, index_order="C")
    assert np.array_equal(read_annotation(str(tmp_path / "named.seg.nrrd"), ann.shape, names), ann)
    # a segmentation Slicer cropped to its extent is placed back with the recorded offset (x y z)
    crop = slicer[3:9, 1:15, 9:19]
    nrrd.write(str(tmp_path / "crop.seg.nrrd"), crop,
               {"Segmentation_ReferenceImageExtentOffset": "9 1 3"}, index_order="C")
    assert np.array_equal(read_annotation(str(tmp_path / "crop.seg.nrrd"), ann.shape, names), ann)
    # failures name the file
    nrrd.write(str(tmp_path / "multi.seg.nrrd"), np.zeros((12, 32, 32, 2), np.uint8), index_order="C")
    with pytest.raises(BadInput, match="multi.seg.nrrd: multi-layer"):
        read_annotation(str(tmp_path / "multi.seg.nrrd"), ann.shape, names)
    with pytest.raises(BadInput, match="a.labels.tif: annotation shape"):
        read_annotation(str(tmp_path / "a.labels.tif"), (12, 32, 31), names)
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(BadInput, match="junk.tif: cannot read volume"):
        read_volume(tmp_path / "junk.tif")
    with pytest.raises(BadInput, match="missing.mrc: file not found"):
        read_volume(tmp_path / "missing.mrc")
    pairs = find_pairs(tmp_path)
    assert [Path(a).name for a, _ in pairs] == ["a.tif", "b.mrc", "c.nrrd"]
    assert [Path(b).name for _, b in pairs] == ["a.labels.tif", "b.labels.mrc", "c.seg.nrrd"]


def test_slicer_segmentations_as_slicer_writes_them_land_on_their_voxels_or_are_refused(tmp_path):
    """A crop one painted slice thick, per-instance segment names, a mix of class and other names,
    an extent reaching outside the tomogram, a voxel size not the tomogram's."""
    import nrrd

    tomo, ann = _real_volume(np.random.default_rng(4))
    names = ["background", "cell", "vacuole", "lipid_droplet"]
    slicer = np.where(ann == 255, 0, ann.astype(np.int32) + 1).astype(np.uint8)
    # one painted slice, cropped by Slicer to (1, Y', X') at offset (x 9, y 1, z 5): its slice axis kept
    one = np.full(ann.shape, 255, np.uint8)
    one[5, 1:15, 9:19] = ann[5, 1:15, 9:19]
    nrrd.write(str(tmp_path / "one.seg.nrrd"), slicer[5:6, 1:15, 9:19],
               {"Segmentation_ReferenceImageExtentOffset": "9 1 5"}, index_order="C")
    assert np.array_equal(read_annotation(str(tmp_path / "one.seg.nrrd"), ann.shape, names), one)
    # "Cell 1", "Cell 2": two instances of the class cell (value 3 and 4 below), by name
    seg = np.where(ann == 1, 3, np.where(ann == 2, 2, 0)).astype(np.uint8)
    seg[(ann == 1) & (np.arange(ann.shape[2]) < 16)] = 4
    header = {"Segment0_Name": "Cell 1", "Segment0_LabelValue": "3", "Segment0_Layer": "0",
              "Segment1_Name": "Cell 2", "Segment1_LabelValue": "4", "Segment1_Layer": "0",
              "Segment2_Name": "vacuole", "Segment2_LabelValue": "2", "Segment2_Layer": "0"}
    nrrd.write(str(tmp_path / "inst.seg.nrrd"), seg, header, index_order="C")
    got = read_annotation(str(tmp_path / "inst.seg.nrrd"), ann.shape, names)
    assert np.array_equal(got, np.where((ann == 1) | (ann == 2), ann, 255))
    # class names and a name that is no class: by value would shift every class (cell -> background)
    header["Segment1_Name"] = "nucleus"
    nrrd.write(str(tmp_path / "mix.seg.nrrd"), seg, header, index_order="C")
    with pytest.raises(BadInput, match=r"mix.seg.nrrd: segment\(s\) 'nucleus' are not classes of the dataset"):
        read_annotation(str(tmp_path / "mix.seg.nrrd"), ann.shape, names)
    # an extent offset that puts labels outside the tomogram (another image's geometry) ...
    nrrd.write(str(tmp_path / "off.seg.nrrd"), slicer,
               {"Segmentation_ReferenceImageExtentOffset": "0 0 6"}, index_order="C")
    with pytest.raises(BadInput, match=r"off.seg.nrrd: \d+ labelled voxels of its extent \(12, 32, 32\) at "
                                       r"offset \(6, 0, 0\)"):
        read_annotation(str(tmp_path / "off.seg.nrrd"), ann.shape, names)
    # ... but an empty margin past it (Slicer's files often run a slice over) is cut
    margin = np.zeros((13, 32, 32), np.uint8)
    margin[:12] = slicer
    nrrd.write(str(tmp_path / "margin.seg.nrrd"), margin,
               {"Segmentation_ReferenceImageExtentOffset": "0 0 0"}, index_order="C")
    assert np.array_equal(read_annotation(str(tmp_path / "margin.seg.nrrd"), ann.shape, names), ann)
    # segments named after no class at all: the reference's values, with a warning
    header = {"Segment0_Name": "tissue", "Segment0_LabelValue": "2", "Segment0_Layer": "0"}
    nrrd.write(str(tmp_path / "tissue.seg.nrrd"), slicer, header, index_order="C")
    assert np.array_equal(read_annotation(str(tmp_path / "tissue.seg.nrrd"), ann.shape, names), ann)


def test_a_4d_one_slice_nrrd_keeps_its_slice_axis_and_its_spacings(tmp_path):
    """(list 1, z 1, y, x): the list axis goes, the one-slice z axis stays, and the spacings follow
    the spatial axes by their kind (the length-1 rule dropped z's and lost them all)."""
    import nrrd

    from simaq_train.data.volumes import read_volume_meta

    nrrd.write(str(tmp_path / "one.seg.nrrd"), np.ones((1, 1, 20, 30), np.uint8),
               {"kinds": ["domain", "domain", "domain", "list"], "spacings": [2.0, 3.0, 4.0, float("nan")]},
               index_order="C")
    vol = read_volume_meta(tmp_path / "one.seg.nrrd")
    assert vol.data.shape == (1, 20, 30) and vol.voxel_size == pytest.approx((4.0, 3.0, 2.0))


def test_an_annotation_at_another_voxel_size_than_its_tomogram_is_refused(tmp_path):
    import mrcfile

    tomo, ann = _real_volume(np.random.default_rng(5))
    names = ["background", "cell", "vacuole", "lipid_droplet"]
    for name, size in (("coarse", 500.0), ("imod", 1.0), ("same", 252.0)):  # 1 Å: IMOD's "unknown"
        with mrcfile.new(tmp_path / f"{name}.labels.mrc") as f:
            f.set_data(ann.view(np.int8))
            f.voxel_size = size
    with pytest.raises(BadInput, match=r"coarse.labels.mrc: voxel size 500 × 500 × 500 Å \(z, y, x\) differs from "
                                       r"its tomogram's 250 × 250 × 250 Å"):
        read_annotation(str(tmp_path / "coarse.labels.mrc"), ann.shape, names, voxel_size=(250.0, 250.0, 250.0))
    for name in ("imod", "same"):
        got = read_annotation(str(tmp_path / f"{name}.labels.mrc"), ann.shape, names, voxel_size=(250.0,) * 3)
        assert np.array_equal(got, ann), name


def test_real_tomograms_whose_annotations_training_never_sees_are_named(tmp_path, caplog):
    """Annotations outside the central crop to the synthetic slices' size (or the field of view)
    add no window: a warning names the pair, and when that is every pair the run is refused
    (data.real.ratio silently became 0)."""
    import tifffile

    tomo, _ = _real_volume(np.random.default_rng(6), shape=(8, 64, 64))
    corner = np.full(tomo.shape, 255, np.uint8)
    corner[:, 8:14, 30:34] = 1  # inside the tomogram's own disc, outside the central 32 × 32
    centre = np.full(tomo.shape, 255, np.uint8)
    centre[:, 30:34, 30:34] = 2
    for name, ann in (("a", corner), ("b", centre)):
        tifffile.imwrite(tmp_path / f"{name}.tif", tomo)
        tifffile.imwrite(tmp_path / f"{name}.labels.tif", ann)
    both = RealSource([], [str(tmp_path)], n_classes=4, fov_margin=2, shape_yx=(32, 32))
    with caplog.at_level("WARNING"):
        both.index()
    assert "a.labels.tif: none of its 192 annotated voxels lies in the field of view and the central 32 × 32" \
        in caplog.text and "b.labels.tif" not in caplog.text
    only_corner = RealSource([(str(tmp_path / "a.tif"), str(tmp_path / "a.labels.tif"))], n_classes=4,
                             fov_margin=2, shape_yx=(32, 32))
    with pytest.raises(BadInput, match=r"data.real: none of the 1 real tomograms' annotated voxels lies"):
        only_corner.index()


def test_real_annotations_that_no_window_is_centred_on_are_refused(tmp_path, ds):
    """Annotated slices only within window // 2 of a tomogram's ends with edge_mode skip: no real
    window, and data.real.ratio silently became 0."""
    import tifffile

    tomo, _ = _real_volume(np.random.default_rng(7), shape=(8, 32, 32))
    ends = np.full(tomo.shape, 255, np.uint8)
    ends[0, 12:18, 12:18] = 1
    tifffile.imwrite(tmp_path / "e.tif", tomo)
    tifffile.imwrite(tmp_path / "e.labels.tif", ends)
    pair = [[str(tmp_path / "e.tif"), str(tmp_path / "e.labels.tif")]]
    build_stream(make_cfg([ds], **{"data.real.pairs": pair, "data.window": 5}))  # reflect: the ends are centres
    with pytest.raises(BadInput, match=r"data.real: no window of the real tomograms is labelled at its centre slice "
                                       r"\(data.edge_mode: skip, data.window: 5\)"):
        build_stream(make_cfg([ds], **{"data.real.pairs": pair, "data.window": 5, "data.edge_mode": "skip"}))


def test_real_source_normalises_masks_and_fits_the_synthetic_slices(tmp_path):
    import tifffile

    tomo, ann = _real_volume(np.random.default_rng(2), shape=(12, 40, 36))
    ann[0, 0, 0] = 2  # outside the field of view: becomes unlabelled
    tifffile.imwrite(tmp_path / "t.tif", tomo)
    tifffile.imwrite(tmp_path / "t.labels.tif", ann)
    src = RealSource([], [str(tmp_path)], n_classes=4, fov_margin=2, shape_yx=(32, 32))
    img, lab = src.load(0)
    assert img.shape == lab.shape == (12, 32, 32) and img.dtype == np.float32
    disc = fov_mask((32, 32), 2)  # the synthetic slices' field of view
    want = np.where(disc, quantile_normalize(tomo, 2)[:, 4:36, 2:34], np.float32(0.0))
    assert np.array_equal(img, want)  # the crop's corners are cleared, as outside a synthetic disc
    assert np.all(lab[:, ~disc] == 255) and lab[0, 0, 0] == 255
    assert (lab == 1).sum() == ((ann == 1)[:, 4:36, 2:34] & disc).sum() > 0
    with pytest.raises(BadInput, match="label value 3 >= model.out_channels=3"):
        RealSource([(str(tmp_path / "t.tif"), str(tmp_path / "t.labels.tif"))], n_classes=3).load(0)


def test_real_tomograms_with_masked_voxels_are_normalised_as_predict_normalises_them(tmp_path, caplog):
    """data.real ranked NaN voxels above every finite one (the brightest input) and shifted every other
    voxel's value, while predict leaves them out and sets them to 0: one function for both now, and
    the labels under NaN voxels are ignored (the input there holds nothing)."""
    import tifffile

    from simaq_train.data.normalize import normalize_finite

    tomo, ann = _real_volume(np.random.default_rng(4), shape=(8, 32, 32))
    tomo = tomo.astype(np.float32)
    tomo[:, 12:20, 12:20] = np.nan
    tifffile.imwrite(tmp_path / "t.tif", tomo)
    tifffile.imwrite(tmp_path / "t.labels.tif", ann)
    img, lab = RealSource([(str(tmp_path / "t.tif"), str(tmp_path / "t.labels.tif"))], n_classes=4,
                          fov_margin=2).load(0)
    assert np.array_equal(img, normalize_finite(tomo, 2, "t")[0]) and np.all(img[np.isnan(tomo)] == 0)
    assert np.array_equal(img, quantile_normalize(tomo, 2, valid=np.isfinite(tomo)))
    assert np.all(lab[np.isnan(tomo)] == 255) and "512 of" in caplog.text and "NaN or infinite" in caplog.text
    tifffile.imwrite(tmp_path / "b.tif", np.full((8, 32, 32), 7, np.uint16))
    tifffile.imwrite(tmp_path / "b.labels.tif", ann)
    with pytest.raises(BadInput, match="b.tif: its field of view holds one value"):
        RealSource([(str(tmp_path / "b.tif"), str(tmp_path / "b.labels.tif"))], n_classes=4).load(0)


def test_real_tomograms_stored_in_another_orientation_are_brought_into_the_training_frame(tmp_path):
    import tifffile

    from simaq_train.config import load_config

    tomo, ann = _real_volume(np.random.default_rng(4), shape=(12, 40, 36))
    tifffile.imwrite(tmp_path / "t.tif", tomo)
    tifffile.imwrite(tmp_path / "t.labels.tif", ann)
    stored = tmp_path / "turned"
    stored.mkdir()  # (y, x, z): the tilt axis is 2, the 0° beam ran along axis 0
    tifffile.imwrite(stored / "t.tif", np.transpose(tomo, (1, 2, 0)))
    tifffile.imwrite(stored / "t.labels.tif", np.transpose(ann, (1, 2, 0)))
    want = RealSource([], [str(tmp_path)], n_classes=4, fov_margin=2).load(0)
    got = RealSource([], [str(stored)], n_classes=4, fov_margin=2, tilt_axis=2, beam_axis=0).load(0)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    with pytest.raises(BadInput, match="data.real.beam_axis"):
        RealSource([], [str(stored)], n_classes=4, tilt_axis=2, beam_axis=2)
    with pytest.raises(BadInput, match="data.real.tilt_axis"):
        load_config(None, ["data.real.tilt_axis=3"])
    with pytest.raises(BadInput, match="data.real.beam_axis"):
        load_config(None, ["data.real.tilt_axis=1", "data.real.beam_axis=1"])


def test_real_windows_are_mixed_in_at_the_configured_ratio(tmp_path, ds):
    import tifffile

    tomo, ann = _real_volume(np.random.default_rng(3))
    tifffile.imwrite(tmp_path / "r.tif", tomo)
    tifffile.imwrite(tmp_path / "r.labels.tif", ann)
    pair = [[str(tmp_path / "r.tif"), str(tmp_path / "r.labels.tif")]]
    cfg = make_cfg([ds], **{"data.real.pairs": pair, "data.real.ratio": 0.25, "data.background_drop": 0.0,
                            "optim.batch_size": 8})
    st = stream_for(cfg)
    real_rows = np.nonzero(st.table[:, 0] == st.real_source)[0]
    assert len(real_rows) == 4  # the annotated slices 4..7
    fracs, n_syn = [], 0
    for e in range(30):
        plan = st.plan(e)
        rows = plan_rows(plan)
        is_real = np.isin(rows, real_rows)
        fracs.append(is_real.mean())
        syn = np.sort(rows[~is_real])
        assert np.array_equal(syn, np.nonzero(st.table[:, 0] != st.real_source)[0])  # synthetic: once each
        n_syn = len(syn)
    assert abs(np.mean(fracs) - 0.25) < 0.03, np.mean(fracs)
    batch = next(iter(st))
    assert batch["image"].shape[1:] == (1, 7, 32, 32) and batch["image"].dtype == torch.float32
    assert n_syn > 0
    none = stream_for(make_cfg([ds], **{"data.real.pairs": pair, "data.real.ratio": 0.0}))
    assert not np.isin(plan_rows(none.plan(0)), np.nonzero(none.table[:, 0] == none.real_source)[0]).any()


def test_write_volume_is_atomic_and_names_bad_suffixes(tmp_path):
    vol = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    for suf in (".tif", ".mrc", ".zarr", ".npy"):
        p = write_volume(tmp_path / f"v{suf}", vol, voxel_size=(2.0, 1.0, 1.0))
        assert np.array_equal(read_volume(p), vol), suf
    with pytest.raises(BadInput, match=r"v\.png: unsupported output format"):
        write_volume(tmp_path / "v.png", vol)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mrc", "v.npy", "v.tif", "v.zarr"]
    assert json.loads((tmp_path / "v.zarr" / "zarr.json").read_text())["attributes"]["voxel_size_zyx"] == [2.0, 1.0, 1.0]


def test_training_package_imports_no_phantom_or_physics_code():
    """simaq_train talks to the factory through the on-disk format; from simaq_factory it may
    import only the error types (for the shared exit codes), the strict YAML loader, the MRC and
    TIFF conventions (IMOD's unsigned bytes, one volume per TIFF), which score's reader of outside
    files shares, and the progress bars' line handling both CLIs share."""
    import subprocess
    import sys

    code = ("import sys, simaq_train.cli, simaq_train.engine.fit, simaq_train.inference, simaq_train.evaluate, "
            "simaq_train.data.build, simaq_train.data.stream; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('simaq_factory'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert set(out) <= {"simaq_factory", "simaq_factory.errors", "simaq_factory.recipe",
                        "simaq_factory.recipe.fields", "simaq_factory.yamlio", "simaq_factory.mrcio",
                        "simaq_factory.tiffio", "simaq_factory.cli", "simaq_factory.cli.progress"}, out


def test_config_reads_exponent_floats_without_a_dot(tmp_path):
    from simaq_train.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 1e-3\n")
    assert load_config(cfg).optim.lr == 0.001
    assert load_config(cfg, ["optim.weight_decay=1e-5"]).optim.weight_decay == 1e-5


def test_config_with_a_key_given_twice_is_refused(tmp_path):
    from simaq_train.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lr: 0.001\nseed: 3\noptim:\n  epochs: 2\n")
    with pytest.raises(BadInput) as err:
        load_config(cfg)
    assert str(cfg) in str(err.value) and "duplicate key 'optim'" in str(err.value)


def test_normalisation_of_tied_levels_matches_scipy_average_ranks():
    """Many large tie groups: every voxel gets ndtri((r − 0.5)/n), r its 1-based average rank
    (scipy's "average"); a volume constant inside the field of view normalises to exactly 0 there."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    rng = np.random.default_rng(7)
    vol = rng.integers(0, 4, (4, 32, 32)).astype(np.float32)
    disc = fov_mask((32, 32), 2)
    out = quantile_normalize(vol, margin=2)
    inside = vol[:, disc].ravel()
    want = ndtri((rankdata(inside, "average") - 0.5) / inside.size).reshape(4, -1)
    np.testing.assert_allclose(out[:, disc], want, rtol=0, atol=1e-6)
    assert np.all(out[:, ~disc] == 0)
    assert len(np.unique(out[:, disc])) == 4  # one output per level
    const = np.where(disc, np.float32(3.5), rng.normal(size=(4, 32, 32)).astype(np.float32))
    assert np.all(quantile_normalize(const, margin=2) == 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # the bit-key sort and the argsort fallback
def test_normalisation_ties_signed_zeros_and_ranks_nans_last_each_alone(dtype):
    """-0.0 and 0.0 are one tie group; every NaN ranks above every number, each in its own group
    (the mid-rank definition of the module docstring, checked against scipy's average ranks)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    rng = np.random.default_rng(11)
    vol = rng.normal(size=(3, 24, 24)).astype(dtype)
    disc = fov_mask((24, 24), 2)
    ys, xs = np.nonzero(disc)
    vol[0, ys[:5], xs[:5]] = -0.0
    vol[1, ys[:4], xs[:4]] = 0.0
    vol[2, ys[:3], xs[:3]] = np.nan
    out = quantile_normalize(vol, margin=2)
    inside = vol[:, disc].ravel()
    finite = ~np.isnan(inside)
    ranks = np.empty(inside.size)
    ranks[finite] = rankdata(inside[finite], "average")  # -0.0 == 0.0 there too
    ranks[~finite] = finite.sum() + np.arange(1, (~finite).sum() + 1)  # in any order: check the set
    want = ndtri((ranks - 0.5) / inside.size)
    got = out[:, disc].ravel()
    np.testing.assert_allclose(got[finite], want[finite], rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.sort(got[~finite]), np.sort(want[~finite]), rtol=0, atol=1e-6)
    assert len(set(got[~finite].tolist())) == 3 and len(set(got[inside == 0].tolist())) == 1


@pytest.mark.parametrize("tied", [0.05, 0.4])  # a few ties (patched position quantiles) and many
def test_normalisation_of_scattered_ties_matches_scipy_for_volume_after_volume(tied):
    """Tie groups scattered through the order, at its minimum and maximum too, checked against
    scipy's average ranks for three volumes of one shape in a row (the position quantiles computed
    for the first are reused: each volume must still get its own ranks)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    rng = np.random.default_rng(23)
    disc = fov_mask((28, 28), 2)
    for _ in range(3):
        vol = rng.normal(size=(5, 28, 28)).astype(np.float32)
        flat = vol.reshape(-1)
        k = int(tied * flat.size)
        flat[rng.integers(0, flat.size, k)] = flat[rng.integers(0, flat.size, k)]
        ys, xs = np.nonzero(disc)
        vol[0, ys[:3], xs[:3]] = -9.0  # the minimum, tied
        vol[4, ys[-2:], xs[-2:]] = 9.0  # the maximum, tied
        out = quantile_normalize(vol, margin=2)
        inside = vol[:, disc].ravel()
        want = ndtri((rankdata(inside, "average") - 0.5) / inside.size).reshape(5, -1)
        np.testing.assert_allclose(out[:, disc], want, rtol=0, atol=1e-6)
        assert np.all(out[:, ~disc] == 0)


@pytest.mark.parametrize("dtype", [np.float16, np.uint8, np.int8, np.uint16, np.int16])
def test_counted_normalisation_of_16_bit_values_is_the_sorted_one(monkeypatch, dtype):
    """Values of 16 bits or fewer are counted per key, not sorted: the same bytes as the sort (ties,
    -0.0 as 0.0, ±inf), and scipy's average ranks."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    from simaq_train.data import normalize

    rng = np.random.default_rng(41)
    if dtype == np.float16:
        vol = (rng.normal(size=(5, 30, 30)) * 4).astype(np.float16)
        flat = vol.reshape(-1)
        flat[rng.integers(0, flat.size, 40)] = -0.0
        flat[rng.integers(0, flat.size, 40)] = 0.0
        flat[:3], flat[3:5] = np.inf, -np.inf
    else:
        info = np.iinfo(dtype)
        vol = rng.integers(info.min, int(info.max) + 1, (5, 30, 30)).astype(dtype)
    counted = quantile_normalize(vol, margin=2)
    disc = fov_mask((30, 30), 2)
    inside = vol[:, disc].astype(np.float64).ravel()
    want = ndtri((rankdata(inside, "average") - 0.5) / inside.size)
    np.testing.assert_allclose(counted[:, disc].ravel(), want, rtol=0, atol=1e-6)
    monkeypatch.setattr(normalize, "_small_keys", lambda values: None)  # the sorted path
    assert quantile_normalize(vol, margin=2).tobytes() == counted.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
def test_normalisation_is_the_same_bytes_whatever_its_chunk_size(monkeypatch, dtype):
    """The key building, the position quantiles and the scatters run a chunk at a time (bounded
    temporaries): chunks of 37 values, boundaries inside tie groups and among the NaNs, give the
    bytes of one chunk."""
    from simaq_train.data import normalize

    rng = np.random.default_rng(31)
    vol = (rng.normal(size=(6, 30, 30)) * (40 if dtype == np.int16 else 1)).astype(dtype)
    if dtype != np.int16:
        vol.reshape(-1)[rng.integers(0, vol.size, 300)] = vol.reshape(-1)[rng.integers(0, vol.size, 300)]
        vol[2, 10:14, 10:14] = np.nan
    whole = quantile_normalize(vol, margin=2)
    monkeypatch.setattr(normalize, "_CHUNK", 37)
    monkeypatch.setattr(normalize, "_last_quantiles", None)
    assert quantile_normalize(vol, margin=2).tobytes() == whole.tobytes()


# --- volume order, resume positions, real FOV, voxel sizes ---------------------------------------

def _volume_order(st, plan: list[np.ndarray]) -> list[tuple[int, int]]:
    """(source, volume) in the order the plan visits them; each must be one contiguous run."""
    rows = plan_rows(plan)
    keys = [(int(s), int(v)) for s, v in st.table[rows, :2]]
    runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
    assert len(runs) == len(set(runs)), runs  # shuffle_volumes=1: one volume at a time
    return runs


def test_volume_order_is_reshuffled_every_epoch_and_reproducible(ds):
    """Module docstring: volumes in a random order, grouped in blocks of ``shuffle_volumes``. With
    blocks of one volume each epoch visits the 6 volumes one after the other, in an order that is a
    function of (seed, epoch): not the file order every epoch, and different between epochs."""
    cfg = make_cfg([ds], **{"data.shuffle_volumes": 1, "data.background_drop": 0.0})
    st, again = stream_for(cfg), stream_for(cfg)
    orders = [_volume_order(st, st.plan(e)) for e in range(4)]
    assert all(sorted(o) == [(0, v) for v in range(6)] for o in orders)
    assert orders[0] != orders[1]
    assert len({tuple(o) for o in orders}) > 1 and any(o != sorted(o) for o in orders)
    assert [_volume_order(again, again.plan(e)) for e in range(4)] == orders  # reproducible


def test_next_position_is_the_start_of_the_next_round_of_batches(ds):
    """A rank that consumed batch j checkpoints at a position every rank can resume from: the first
    batch of the next round (a multiple of the world size), so no batch is redone or skipped."""
    for world in (1, 2, 3, 4):
        for j in range(13):
            p = stream_mod.next_position(j, world)
            assert p % world == 0 and j < p <= j + world, (j, world, p)
            assert p // world == j // world + 1  # the round after batch j's
    cfg = make_cfg([ds], **{"data.background_drop": 0.0, "optim.batch_size": 2})
    for world in (2, 3):
        ranks = [stream_for(cfg, r, world) for r in range(world)]
        n = len(ranks[0].plan())
        for j in range(world, n - world):
            p = stream_mod.next_position(j, world)
            for r, st in enumerate(ranks):
                st.set_state(0, p)  # accepted on every rank
                assert list(st.my_batches()) == list(range(p + r, n, world))


def test_a_labelled_real_pixel_with_image_value_zero_stays_in_the_fov():
    """Real FOV = where any slice is nonzero *or labelled* (WindowStream._fov): a labelled column of
    exact zeros is inside, so the warp keeps its label and the intensity ops change it."""
    from simaq_train.data.sources import slice_index
    from simaq_train.data.stream import WindowStream

    rng = np.random.default_rng(0)
    syn = (rng.standard_normal((9, 16, 16)).astype(np.float32), rng.integers(0, 3, (9, 16, 16)).astype(np.uint8))
    image = rng.standard_normal((9, 16, 16)).astype(np.float32) + 3.0  # nonzero everywhere ...
    image[:, 7, 9] = 0.0  # ... but one labelled column
    labels = np.full((9, 16, 16), 255, np.uint8)
    labels[:, 5:10, 5:10] = 1
    aug = {"enable": True, "flip": 0.0, "rot90": 0.0, "elastic_prob": 1.0, "elastic_alpha": 1e-3,
           "resized_crop_prob": 0.0, "intensity": 1.0, "noise_std": 0.0, "blur_prob": 0.0, "invert_prob": 0.0}
    cfg = config_from_dict({"seed": 2, "data": {"window": 7, "real": {"ratio": 0.9}},
                            "optim": {"batch_size": 4}, "augment": aug})
    st = WindowStream([InMemoryVolumes([syn]), InMemoryVolumes([(image, labels)])],
                      [[slice_index(syn[1])], [slice_index(labels)]], cfg, real_source=1)
    fov = st._fov(1, 0, image, labels)
    assert fov[7, 9] and fov.sum() == 16 * 16
    n_real = 0
    for batch in st:
        for img, tgt, real in zip(batch["image"].numpy()[:, 0], batch["target"].numpy(), batch["real"].numpy()):
            if real:
                n_real += 1
                assert tgt[7, 9] == 1  # not reset to 255 as outside the field of view
                assert np.all(img[:, 7, 9] != 0)  # brightness/contrast reach it
    assert n_real > 0


def test_voxel_size_axis_order_round_trips_through_mrc_and_nrrd(tmp_path):
    """Volume.voxel_size is (z, y, x); MRC stores (x, y, z), NRRD ``spacings`` are in x, y, z order
    for a C-order array. An anisotropic voxel z=10, y=20, x=30 must keep its order."""
    import mrcfile
    import nrrd

    from simaq_train.data.volumes import read_volume_meta

    vol = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    # MRC written by hand: x=30, y=20, z=10
    with mrcfile.new(tmp_path / "hand.mrc") as f:
        f.set_data(vol)
        f.voxel_size = (30.0, 20.0, 10.0)
    assert read_volume_meta(tmp_path / "hand.mrc").voxel_size == (10.0, 20.0, 30.0)
    # MRC written by write_volume from a (z, y, x) voxel size
    out = write_volume(tmp_path / "w.mrc", vol, (10.0, 20.0, 30.0))
    with mrcfile.open(out) as f:
        vs = f.voxel_size
        assert (float(vs.x), float(vs.y), float(vs.z)) == (30.0, 20.0, 10.0)
    meta = read_volume_meta(out)
    assert meta.voxel_size == (10.0, 20.0, 30.0) and np.array_equal(meta.data, vol)
    # NRRD: C-order array (z, y, x) is written with the fastest axis (x) first in the header
    nrrd.write(str(tmp_path / "s.nrrd"), vol, {"spacings": [30.0, 20.0, 10.0]}, index_order="C")
    assert read_volume_meta(tmp_path / "s.nrrd").voxel_size == (10.0, 20.0, 30.0)


def _imod_stamp(path: Path, flags: int) -> None:
    """Stamp an MRC header as IMOD writes it: "IMOD" at byte 152, its flags at 156."""
    import struct

    b = bytearray(path.read_bytes())
    b[152:160] = struct.pack("<ii", 1146047817, flags)
    path.write_bytes(bytes(b))


def test_imod_byte_volumes_are_read_with_the_sign_imod_says(tmp_path):
    """IMOD writes mode-0 MRC as unsigned bytes (flag bit 0 clear); mrcfile reads mode 0 as int8,
    which turned bytes 128-255 into the darkest voxels (in a tomogram to segment, or an 8-bit
    reconstruction to score). Without IMOD's stamp mode 0 stays signed (MRC2014)."""
    import mrcfile

    from simaq_factory.score.inputs import _read_volume as score_reads
    from simaq_train.data.volumes import read_volume_meta

    u8 = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16).astype(np.uint8)  # 0..255, twice
    for name, flags, want in (("unsigned", 0, u8), ("signed", 1, u8.view(np.int8)), ("plain", None, u8.view(np.int8))):
        path = tmp_path / f"{name}.mrc"
        with mrcfile.new(path) as f:
            f.set_data(u8.view(np.int8))
        if flags is not None:
            _imod_stamp(path, flags)
        for got in (read_volume_meta(path).data, score_reads(path)):  # predict/fit, and score's predictions
            assert got.dtype == want.dtype and np.array_equal(got, want), name
    # both readers also put a file whose MAPC/MAPR/MAPS swap x and z back in (z, y, x)
    vol = np.random.default_rng(3).random((3, 4, 5)).astype(np.float32)
    with mrcfile.new(tmp_path / "swapped.mrc") as f:
        f.set_data(np.ascontiguousarray(vol.transpose(2, 1, 0)))  # sections run along x
        f.header.mapc, f.header.mapr, f.header.maps = 3, 2, 1
    for got in (read_volume_meta(tmp_path / "swapped.mrc").data, score_reads(tmp_path / "swapped.mrc")):
        assert np.array_equal(got, vol)


def test_tiff_voxel_size_is_read_and_written_in_angstrom(tmp_path):
    """ImageJ TIFF: ``spacing`` (z) and the X/YResolution tags (pixels per unit) with its ``unit``;
    Volume.voxel_size is (z, y, x) in Å as MRC's; written back as an ImageJ hyperstack in microns."""
    import mrcfile
    import tifffile

    from simaq_train.data.volumes import read_volume_meta

    vol = np.random.default_rng(0).random((4, 8, 8)).astype(np.float32)
    tifffile.imwrite(tmp_path / "ij.tif", vol, imagej=True, resolution=(1 / 0.05, 1 / 0.04),
                     metadata={"spacing": 0.1, "unit": "micron", "axes": "ZYX"})
    meta = read_volume_meta(tmp_path / "ij.tif")
    assert np.array_equal(meta.data, vol)
    np.testing.assert_allclose(meta.voxel_size, (1000.0, 400.0, 500.0), rtol=1e-6)  # z, y, x in Å
    # without a unit (ImageJ's "pixel") there is no physical size
    tifffile.imwrite(tmp_path / "px.tif", vol, imagej=True, metadata={"axes": "ZYX"})
    assert read_volume_meta(tmp_path / "px.tif").voxel_size is None
    for dtype in (np.float32, np.int16):  # an ImageJ hyperstack, or the in-plane tags only
        out = write_volume(tmp_path / f"o-{np.dtype(dtype).name}.tif", vol.astype(dtype), (1000.0, 400.0, 500.0))
        back = read_volume_meta(out)
        assert np.array_equal(back.data, vol.astype(dtype))
        want = (1000.0, 400.0, 500.0) if dtype == np.float32 else (500.0, 400.0, 500.0)
        np.testing.assert_allclose(back.voxel_size, want, rtol=1e-5)
    # TIFF in, MRC out: the MRC header holds the size in Å, x first
    out = write_volume(tmp_path / "o.mrc", vol, meta.voxel_size)
    with mrcfile.open(out) as f:
        np.testing.assert_allclose([f.voxel_size.x, f.voxel_size.y, f.voxel_size.z], [500.0, 400.0, 1000.0],
                                   rtol=1e-5)


def test_a_tiff_is_one_volume_or_refused_never_cut_to_its_first_series(tmp_path):
    """Pages of different shapes or several volumes in one TIFF were read as the first series: a
    32-page file with one odd page became a 31-slice volume (and segmentation), exit 0."""
    import tifffile

    from simaq_factory.score.inputs import _file_is_integer, _read_volume
    from simaq_train.data.volumes import read_volume_meta

    vol = np.random.default_rng(2).random((6, 8, 8)).astype(np.float32)
    with tifffile.TiffWriter(tmp_path / "odd-last.tif") as t:
        for k in range(6):
            t.write(vol[k] if k < 5 else vol[k, :4, :4], metadata=None, contiguous=False)
    with tifffile.TiffWriter(tmp_path / "odd-middle.tif") as t:
        for k in range(6):
            t.write(vol[k] if k != 2 else vol[k, :4, :4], metadata=None, contiguous=False)
    with tifffile.TiffWriter(tmp_path / "two.tif") as t:
        t.write(vol)
        t.write(vol[::-1])
    odd = "pages of different shapes|pages are not all one shape"  # as tifffile groups the pages
    why = {"odd-last.tif": re.escape("holds 2 image series of shapes (5, 8, 8), (4, 4) (pages of different shapes"),
           "odd-middle.tif": odd, "two.tif": re.escape("holds 2 image series of shapes (6, 8, 8), (6, 8, 8)")}
    for name, needle in why.items():
        for read in (read_volume_meta, _read_volume, _file_is_integer):
            with pytest.raises(BadInput, match=needle):
                read(tmp_path / name)
    # a thumbnail or pyramid level (reduced resolution) beside the volume is not a second volume
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as t:
        t.write(vol, subifds=1, photometric="minisblack")
        t.write(vol[:, ::2, ::2], subfiletype=1, photometric="minisblack")
        t.write(vol[0, ::4, ::4], subfiletype=1, photometric="minisblack")
    for read in (lambda p: read_volume_meta(p).data, _read_volume):
        assert np.array_equal(read(tmp_path / "thumb.tif"), vol)


def test_reader_metadata_round_trips_fiji_units_zarr_sizes_nrrd_units_and_detached_headers(tmp_path, caplog):
    """ImageJ's escaped µm (unit=\\u00B5m) was an unknown unit: no voxel size; a Zarr's voxel_size_zyx
    (what write_volume records) was not read; an NRRD segmentation of an input in mm got Å numbers
    without units (read by Slicer as mm: 10^7 times too large); .nhdr was refused; a garbage .npy got
    numpy's advice to load it unsafely."""
    import nrrd
    import tifffile

    from simaq_train.data.volumes import read_volume_meta

    vol = np.random.default_rng(5).random((4, 8, 8)).astype(np.float32)
    desc = "ImageJ=1.54f\nimages=4\nslices=4\nunit=\\u00B5m\nspacing=0.02\nloop=false\n"
    tifffile.imwrite(tmp_path / "fiji.tif", vol, description=desc, resolution=(100, 100), metadata=None,
                     photometric="minisblack")
    np.testing.assert_allclose(read_volume_meta(tmp_path / "fiji.tif").voxel_size, (200.0, 100.0, 100.0))
    out = write_volume(tmp_path / "v.zarr", vol, (12.0, 11.0, 10.0))
    assert read_volume_meta(out).voxel_size == (12.0, 11.0, 10.0)
    nrrd.write(str(tmp_path / "mm.nrrd"), vol, {"spacings": [0.001, 0.001, 0.002], "units": ["mm"] * 3},
               index_order="C")
    mm = read_volume_meta(tmp_path / "mm.nrrd")
    np.testing.assert_allclose(mm.voxel_size, (2e4, 1e4, 1e4))  # Å
    seg = write_volume(tmp_path / "seg.nrrd", np.zeros(vol.shape, np.uint8), mm.voxel_size, like=mm)
    header = nrrd.read_header(str(seg))
    np.testing.assert_allclose(header["spacings"], [0.001, 0.001, 0.002])  # the input's, in its units
    assert list(header["units"]) == ["mm"] * 3
    plain = write_volume(tmp_path / "plain.nrrd", vol, (30.0, 20.0, 10.0))  # from a TIFF or MRC: Å, said so
    assert list(nrrd.read_header(str(plain))["units"]) == ["angstrom"] * 3
    assert read_volume_meta(plain).voxel_size == (30.0, 20.0, 10.0)
    nrrd.write(str(tmp_path / "det.nhdr"), vol, {"encoding": "raw"}, detached_header=True, index_order="C")
    assert np.array_equal(read_volume(tmp_path / "det.nhdr"), vol)
    (tmp_path / "junk.npy").write_bytes(b"not a numpy file")
    with pytest.raises(BadInput, match=r"junk.npy: not a NumPy array file \(.npy of numbers\)"):
        read_volume(tmp_path / "junk.npy")


def test_real_dirs_warn_about_tomograms_without_annotations_and_scan_map_files(tmp_path, caplog):
    import tifffile

    from simaq_train.data.sources import find_pairs

    tomo, ann = _real_volume(np.random.default_rng(7))
    write_volume(tmp_path / "a.map", tomo.astype(np.int16))
    tifffile.imwrite(tmp_path / "a.labels.tif", ann)
    tifffile.imwrite(tmp_path / "b.tif", tomo)
    tifffile.imwrite(tmp_path / "b_labels.tif", ann)  # not a name the pairing knows
    assert find_pairs(tmp_path) == [(str(tmp_path / "a.map"), str(tmp_path / "a.labels.tif"))]
    # b_labels.tif is taken for a tomogram too: both named, so the misspelt annotation shows
    assert "2 tomogram(s) without an annotation" in caplog.text and "skipped: b.tif, b_labels.tif" in caplog.text


def test_nrrd_spacings_follow_their_axes_past_a_singleton_and_the_world_frame_is_kept(tmp_path):
    import nrrd

    from simaq_train.data.volumes import Volume, read_volume_meta

    vol = np.random.default_rng(1).random((3, 4, 5)).astype(np.float32)
    # a leading singleton axis (C order): spacings fastest first, x, y, z, then the singleton
    nrrd.write(str(tmp_path / "n4.nrrd"), vol[None], {"spacings": [1.0, 2.0, 3.0, np.nan]}, index_order="C")
    meta = read_volume_meta(tmp_path / "n4.nrrd")
    assert meta.data.shape == (3, 4, 5) and meta.voxel_size == (3.0, 2.0, 1.0)
    # a Slicer-style volume with an origin and oblique-free directions: a segmentation written
    # "like" it carries its space, directions and origin, so it overlays the tomogram
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.5, 0.25, 2.0]),
              "space origin": np.array([10.0, -4.0, 7.5])}
    nrrd.write(str(tmp_path / "sd.nrrd"), vol, header, index_order="C")
    like = read_volume_meta(tmp_path / "sd.nrrd")
    out = write_volume(tmp_path / "seg.nrrd", (vol > 0.5).astype(np.uint8), like.voxel_size, like=like)
    _, h = nrrd.read(str(out), index_order="C")
    assert h["space"] == "left-posterior-superior" and "spacings" not in h
    np.testing.assert_array_equal(h["space directions"], np.diag([0.5, 0.25, 2.0]))
    np.testing.assert_array_equal(h["space origin"], [10.0, -4.0, 7.5])
    # another shape: nothing of the frame is copied, the spacings are written
    other = write_volume(tmp_path / "o.nrrd", np.zeros((2, 2, 2), np.uint8), (1.0, 1.0, 1.0),
                         like=Volume(vol, like.voxel_size, like.header))
    _, h = nrrd.read(str(other), index_order="C")
    assert "space directions" not in h and list(h["spacings"]) == [1.0, 1.0, 1.0]
    # named units become Å (3D Slicer writes mm); without units the numbers are taken as they are
    nrrd.write(str(tmp_path / "mm.nrrd"), vol, {**header, "space units": ["mm", "mm", "mm"]}, index_order="C")
    np.testing.assert_allclose(read_volume_meta(tmp_path / "mm.nrrd").voxel_size, (2e7, 2.5e6, 5e6))
    nrrd.write(str(tmp_path / "nm.nrrd"), vol, {"spacings": [1.0, 2.0, 3.0], "units": ["nm"] * 3},
               index_order="C")
    assert read_volume_meta(tmp_path / "nm.nrrd").voxel_size == (30.0, 20.0, 10.0)


def test_unreadable_volume_files_get_one_line_that_says_what_they_are(tmp_path, caplog):
    import tifffile

    from simaq_train.data.volumes import read_volume_meta

    (tmp_path / "empty.nrrd").write_bytes(b"")
    tifffile.imwrite(tmp_path / "tif.mrc", np.zeros((4, 32, 32), np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "whole.tif", np.zeros((4, 64, 64), np.float32), photometric="minisblack")
    (tmp_path / "cut.tif").write_bytes((tmp_path / "whole.tif").read_bytes()[:20000])
    cases = {"empty.nrrd": "empty file", "tif.mrc": "not an MRC file", "cut.tif": "cannot read volume"}
    for name, want in cases.items():
        with pytest.raises(BadInput) as err:
            read_volume_meta(tmp_path / name)
        assert want in err.value.message, (name, err.value.message)
    assert not [r for r in caplog.records if r.name == "tifffile"]  # tifffile's own ERROR line is kept quiet


def test_imod_suffixes_are_outputs_too_and_a_folder_output_asks_for_a_file_name(tmp_path):
    import mrcfile

    from simaq_train.data.volumes import read_volume_meta

    vol = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    for suffix in (".rec", ".map"):  # what IMOD and CCP4 users name MRC volumes
        out = write_volume(tmp_path / f"seg{suffix}", vol, (10.0, 20.0, 30.0))
        with mrcfile.open(out) as f:
            assert float(f.voxel_size.x) == 30.0
        assert np.array_equal(read_volume_meta(out).data, vol)
    with pytest.raises(BadInput, match=r"is a directory; give a file name, e\.g\. .*segmentation\.tif"):
        write_volume(tmp_path, vol)
    np.save(tmp_path / "flat.npy", vol[:1])
    with pytest.raises(BadInput, match=r"got shape \(4, 4\) \(\(1, 4, 4\) without its length-1 axes\)"):
        read_volume_meta(tmp_path / "flat.npy")


def test_a_tiff_whose_codec_needs_imagecodecs_says_how_to_get_it(tmp_path):
    """An LZW TIFF (Fiji's, a microscope's) without the package imagecodecs: tifffile's message named
    neither the compression nor how to get the codec; both readers now say it, exit 2."""
    import tifffile

    from simaq_factory.score.inputs import _read_volume
    from simaq_train.data.volumes import read_volume_meta

    vol = np.arange(4 * 6 * 6, dtype=np.uint16).reshape(4, 6, 6)
    tifffile.imwrite(tmp_path / "v.tif", vol, photometric="minisblack")
    raw = bytearray((tmp_path / "v.tif").read_bytes())
    with tifffile.TiffFile(tmp_path / "v.tif") as tif:  # every page's Compression tag: 1 (none) -> 5 (LZW)
        offsets = [page.tags["Compression"].valueoffset for page in tif.pages]
    for at in offsets:
        raw[at:at + 2] = (5).to_bytes(2, "little")
    (tmp_path / "lzw.tif").write_bytes(bytes(raw))
    import importlib.util

    if importlib.util.find_spec("imagecodecs") is None:
        for read in (read_volume_meta, _read_volume):
            with pytest.raises(BadInput, match=r"compressed \(LZW\), which tifffile decodes with the Python package "
                                               r"imagecodecs: pip install imagecodecs"):
                read(tmp_path / "lzw.tif")
    else:  # with the codec the file is read (its bytes are not LZW: whatever it decodes, no such message)
        for read in (read_volume_meta, _read_volume):
            try:
                read(tmp_path / "lzw.tif")
            except BadInput as err:
                assert "pip install imagecodecs" not in str(err)
