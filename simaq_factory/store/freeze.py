"""``freeze``: seal a complete dataset for publication.

Writes ``manifest.jsonl`` (one line per sample), ``DATASET.md`` (the dataset card: recipe, counts,
per-class voxel fractions, intensity percentiles, software versions, preview images under
``previews/``), sets the card's status to ``frozen`` and finally ``SHA256SUMS`` over every file
(the noise banks under ``dataset.zarr/banks/`` included). ``manifest.jsonl`` and ``DATASET.md`` are
written under a temporary name (``.NAME.partial``) and renamed: a reader (a fit that hashes the
manifest) never sees part of one.
A frozen dataset refuses later builds. Freezing first verifies every shard (checksums, provenance,
a deep read), so a damaged dataset is never sealed, and refuses a file in ``dataset.zarr/`` or
``provenance/`` that is none of the dataset's (it would be sealed in as part of it).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from simaq_factory.acquisition.axes import frame_axes
from simaq_factory.artifacts.banks import bank_specs
from simaq_factory.errors import BadInput, BuildFailed
from simaq_factory.labels import LABEL_NAMES
from simaq_factory.store.dataset import Progress, read_card, read_provenance, update_card
from simaq_factory.store.inspect import check_sealed_intact, open_dataset_recipe, read_card_checked
from simaq_factory.store.layout import (
    GROUP_NAME,
    PROVENANCE_DIR,
    SUMS,
    dataset_classes,
    n_axes,
    provenance_path,
    shard_ranges,
)
from simaq_factory.store.outdir import RESOLVED, VERBATIM, claim_out_dir, sweep_temp_files
from simaq_factory.store.verify import SUMS_PARTIAL, file_digests, sealed_files, verify_dataset
from simaq_factory.versions import built_on, describe_software

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
CARD = "DATASET.md"
PREVIEWS = "previews"
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
STATS_STRIDE = 7  # at least every 7th voxel inside the field of view feeds the percentiles
STATS_VALUES = 2**24  # at most this many values per array (64 MiB): freeze's memory is bounded at any size


def _fov(shape: tuple[int, int, int]) -> np.ndarray:
    _, y, x = shape
    yy, xx = np.ogrid[:y, :x]
    r = min(y, x) / 2.0
    return ((yy - (y - 1) / 2) ** 2 + (xx - (x - 1) / 2) ** 2) <= r * r


def stats_stride(n_volumes: int, shape: tuple[int, int, int]) -> int:
    """The stride, along each slice's in-view voxels of ``shape``, of the percentile sample of
    ``n_volumes`` volumes: at least :data:`STATS_STRIDE`, and at most :data:`STATS_VALUES` values
    in all (or one per slice, where there are more slices than that)."""
    per_slice = max(1, STATS_VALUES // (n_volumes * shape[0]))
    return max(STATS_STRIDE, -(-int(_fov(shape).sum()) // per_slice))


class _Stats:
    """Per-class voxel counts and the percentile sample, fed one stored volume at a time by the deep
    read of :func:`verify_dataset` (the data are decoded once for both), then the manifest."""

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe
        shape = tuple(recipe.dataset.shape)
        self.stride = stats_stride(recipe.dataset.n_samples * n_axes(recipe), shape)  # recon: n per axis
        ys, xs = np.nonzero(_fov(shape))
        self.ys, self.xs = ys[:: self.stride], xs[:: self.stride]  # (Z, k) gathers: v[:, fov][:, ::stride]
        self.counts: dict[int, np.ndarray] = {}
        self.samples: dict[str, list[np.ndarray]] = {"phantom": [], "recon": []}

    def add(self, name: str, index: int, vol: np.ndarray) -> None:
        if name == "labels":
            self.counts[index] = np.bincount(vol.ravel(), minlength=256)
        elif name in self.samples:
            # a three-axis recon (axes, Z, Y, X): each inside the cylinder about its tilt axis
            vols = [vol] if vol.ndim == 3 else [np.transpose(v, frame_axes(k)) for k, v in enumerate(vol)]
            self.samples[name] += [v[:, self.ys, self.xs].astype(np.float32).ravel() for v in vols]

    def finish(self, out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        recipe = self.recipe
        counts_total = np.zeros(256, dtype=np.int64)
        manifest = []
        machines: Counter[str] = Counter()
        software: Counter[str] = Counter()
        for shard, _ in enumerate(shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard)):
            prov = read_provenance(out, shard) or {}
            machines[built_on(prov)] += 1
            software[describe_software(prov.get("versions") or {})] += 1
            for rec in prov.get("sample_records", []):
                i = int(rec["index"])
                counts = self.counts[i]
                counts_total += counts
                ang = rec["angles"]
                manifest.append({
                    "index": i, "shard": shard, "n_cells": rec.get("n_cells"),
                    "tilt_span_deg": ang["span_deg"], "tilt_offset_deg": ang["offset_deg"],
                    "n_angles": len(ang["recon_deg"]), "phantom_scale": rec["phantom_spec"].get("scale"),
                    **({"tilt_span_deg_by_axis": [a["angles"]["span_deg"] for a in rec["acquisitions"]]}
                       if "acquisitions" in rec else {}),
                    "label_voxels": {LABEL_NAMES[v]: int(counts[v]) for v in LABEL_NAMES if counts[v]},
                })
        total = int(counts_total.sum())
        stats = {
            # the classes of the card's label map (no nucleus row where the recipe has none)
            "label_fractions": {name: float(counts_total[v] / total)
                                for v, name in dataset_classes(recipe).items()},
            "percentiles": {name: dict(zip([f"p{p}" for p in PERCENTILES],
                                           np.percentile(np.concatenate(vals), PERCENTILES).round(5).tolist()))
                            for name, vals in self.samples.items()},
            "percentile_sampling": f"every {self.stride}th voxel inside the inscribed cylinder",
            # shards per device / CPU kernels and per software: a resumed build may mix them
            "built_on": dict(machines.most_common()),
            "software_by_shard": dict(software.most_common()),
        }
        return manifest, stats


def _card_markdown(recipe_json: dict[str, Any], card: dict[str, Any], stats: dict[str, Any],
                   manifest: list[dict[str, Any]], previews: list[str]) -> str:
    spans = [m["tilt_span_deg"] for m in manifest]
    cells = [m["n_cells"] for m in manifest]
    lines = [
        "# simaq-factory dataset", "",
        f"- recipe id: `{card['recipe_id']}`",
        f"- samples: {card['n_samples']} of shape (z, y, x) {tuple(card['shape_zyx'])}, z = tilt axis",
        f"- shards: {card['n_samples'] // card['samples_per_shard'] + bool(card['n_samples'] % card['samples_per_shard'])}"
        f" ({card['samples_per_shard']} sample{'s' if card['samples_per_shard'] != 1 else ''} each)",
        f"- seed: {card['seed']}",
        f"- cells per sample: min {min(cells)}, max {max(cells)}, mean {np.mean(cells):.2f}",
        f"- tilt span: {min(spans):.1f} to {max(spans):.1f} deg (mean {np.mean(spans):.1f})",
        f"- labels: {', '.join(f'{k} {v}' for k, v in card['label_map'].items())}; ignore = {card['ignore_label']}",
        f"- frozen: {card.get('frozen_at', '')}", "",
        "## Per-class voxel fractions", "",
        "| class | fraction |", "|---|---|",
        *[f"| {k} | {v:.5f} |" for k, v in stats["label_fractions"].items()], "",
        f"## Intensity percentiles ({stats['percentile_sampling']})", "",
        "| array | " + " | ".join(f"p{p}" for p in PERCENTILES) + " |",
        "|---|" + "---|" * len(PERCENTILES),
        *[f"| {name} | " + " | ".join(f"{v:.4g}" for v in pct.values()) + " |"
          for name, pct in stats["percentiles"].items()], "",
        "## Software", "",
        *[f"- {k}: {v}" for k, v in card["software"].items()], "",
        "## Built on (shards)", "",
        *[f"- {k}: {v}" for k, v in stats["built_on"].items()],
        *([f"- {k}: {v}" for k, v in stats["software_by_shard"].items()]
          if len(stats["software_by_shard"]) > 1 else []), "",
        "## Previews", "",
        *[f"![sample preview]({p})" for p in previews], "",
        "## Files", "",
        "- `dataset.zarr/`: Zarr v3 arrays phantom, labels, recon (and noisy, sinogram, angles when stored)",
        "- `dataset.zarr/banks/`: the noise banks the samples were rendered with (Perlin volumes, ice-crack "
        "blocks), each hashed in the dataset card (`banks`), so the dataset regenerates with nothing else",
        "- `provenance/shard-*.json`: per-sample parameters, seeds, timings, devices, shard checksums",
        f"- `{MANIFEST}`: one JSON line per sample; `{SUMS}`: sha256 of every file but the logs "
        f"(`sha256sum -c {SUMS}`)",
        "", "## Recipe (resolved)", "", "```json", json.dumps(recipe_json, indent=1, sort_keys=True), "```", "",
    ]
    return "\n".join(lines)


def write_sha256sums(out: Path, known: dict[str, str] | None = None, progress: Progress | None = None) -> int:
    """Write SHA256SUMS over :func:`sealed_files`, under a temporary name renamed when whole: a
    SHA256SUMS that exists is complete, and an interrupted freeze (none yet) is completed by
    freezing again. ``known`` maps relative paths to digests just checked under the same lock (the
    data shard files verify matched against their provenance): those files are not read again."""
    (out / SUMS_PARTIAL).unlink(missing_ok=True)  # a killed freeze's; _write_atomic writes this name
    rels = [p.relative_to(out).as_posix() for p in sealed_files(out)]
    digests = file_digests(out, rels, known or {}, progress)
    _write_atomic(out / SUMS, (f"{digests[rel]}  {rel}\n" for rel in rels))
    return len(rels)


#: what a dataset folder holds of its own (freeze adds MANIFEST, CARD, PREVIEWS and SHA256SUMS)
LAYOUT = frozenset({VERBATIM, RESOLVED, GROUP_NAME, PROVENANCE_DIR, MANIFEST, CARD, PREVIEWS})


def _own_files(out: Path, recipe: Any) -> set[str]:
    """What ``dataset.zarr/`` and ``provenance/`` may hold (relative to ``out``): the group's and every
    array's ``zarr.json``, each array's shard files of the recipe's shards, each noise bank's
    metadata and chunks (its chunk grid read from its ``zarr.json``), a record per shard."""
    from simaq_factory.store.banks import BANKS_GROUP
    from simaq_factory.store.inspect import dataset_specs

    n_shards = len(shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard))
    own = {f"{GROUP_NAME}/zarr.json", f"{GROUP_NAME}/{BANKS_GROUP}/zarr.json"}
    own |= {provenance_path(Path(), s).as_posix() for s in range(n_shards)}
    for name, spec in dataset_specs(recipe).items():
        own |= {f"{GROUP_NAME}/{name}/zarr.json"} | {f"{GROUP_NAME}/{name}/{spec.shard_key(s)}"
                                                     for s in range(n_shards)}
    banks = out / GROUP_NAME / BANKS_GROUP
    for name in bank_specs(recipe.artifacts, tuple(recipe.dataset.shape), recipe.seed):
        rel = f"{GROUP_NAME}/{BANKS_GROUP}/{name}"
        own.add(f"{rel}/zarr.json")
        try:
            meta = json.loads((banks / name / "zarr.json").read_text())
            grid = [-(-int(n) // int(c)) for n, c in
                    zip(meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"], strict=True)]
        except Exception:  # noqa: BLE001 - a damaged bank: verify names it next, and freeze stops there
            own |= {p.relative_to(out).as_posix() for p in (banks / name).rglob("*")}
            continue
        own |= {f"{rel}/c/" + "/".join(map(str, key)) for key in np.ndindex(*grid)}
    return own


def _check_listable(out: Path, recipe: Any) -> None:
    """:class:`BadInput` naming a file SHA256SUMS could not list (a line break or backslash in its name,
    which ``sha256sum -c`` and verify would read as another name; a name that is not UTF-8), and
    one naming a file in ``dataset.zarr/`` or ``provenance/`` that is none of the dataset's (a chunk
    key past the recipe's shards, a record of no shard of it: nothing reads it and nothing but
    freeze would seal it, so it is refused rather than published); a warning naming the files at
    the top level that are not the dataset's own (a README or LICENSE added on purpose, or
    something left there by mistake)."""
    own = _own_files(out, recipe)
    extra = []
    for path in sealed_files(out):
        rel = path.relative_to(out).as_posix()
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise BadInput(str(path), "its name is not UTF-8, which SHA256SUMS cannot list: rename or remove "
                                      "it, then freeze") from None
        if any(c in rel for c in "\n\r\\"):
            raise BadInput(repr(str(path)), "its name holds a line break or a backslash, which SHA256SUMS "
                                            "cannot list: rename or remove it, then freeze")
        top = rel.split("/", 1)[0]
        if top in (GROUP_NAME, PROVENANCE_DIR) and rel not in own:
            raise BadInput(str(path), f"not part of the dataset's layout (no array, shard, noise bank or "
                                      f"provenance record of its recipe is stored there): move it out of "
                                      f"{out}, then freeze")
        if top not in LAYOUT:
            extra.append(rel)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        log.warning("%s: sealing %d file(s) that are not part of the dataset's layout: %s", out, len(extra), shown)


def _write_atomic(path: Path, chunks: Iterable[str]) -> None:
    """Write ``chunks`` to ``.NAME.partial`` beside ``path``, sync it and rename it over ``path``: a
    reader sees the whole file or none (was: written in place, so a ``simaq-train fit`` started
    meanwhile hashed a partial manifest.jsonl and recorded a dataset hash no later resume matched),
    and an error or interrupt leaves no partial file. What a kill leaves is removed by the next
    freeze or build (:func:`~simaq_factory.store.outdir.sweep_temp_files`)."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def freeze_dataset(out: Path, *, previews: int = 2, progress: Progress | None = None) -> dict[str, Any]:
    """Verify, then seal ``out``. Raises BuildFailed (not verifiable). A dataset already sealed is
    left as it is: ``{"already_frozen": True, "files": n}`` (re-running a pipeline is not an error).
    ``progress`` is told each phase's work (verify's, previews, hashing the files)."""
    recipe, rid = open_dataset_recipe(out)
    if read_card_checked(out).get("status") == "frozen" and (out / SUMS).is_file():
        check_sealed_intact(out)
        n = sum(1 for line in (out / SUMS).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
        return {"already_frozen": True, "files": n}
    # no build may write while the dataset is sealed; the claim admits a frozen card only when
    # SHA256SUMS, written last, is missing: an interrupted freeze, sealed again here
    with claim_out_dir(out, rid, sealing=True):
        sweep_temp_files(out)  # a killed build's leftovers are not part of the dataset
        _check_listable(out, recipe)  # before anything is written
        if read_card(out).get("status") == "frozen":
            log.warning("%s: completing an interrupted freeze (no %s)", out, SUMS)
            update_card(out, {"status": "complete"})
        return _freeze(out, recipe, previews, progress)


def _freeze(out: Path, recipe: Any, previews: int, progress: Progress | None) -> dict[str, Any]:
    from simaq_factory.store.preview import render_preview

    acc = _Stats(recipe)
    # one decode feeds checks and stats
    report = verify_dataset(out, deep=True, on_volume=acc.add, progress=progress)
    if not report.ok:
        raise BuildFailed(f"cannot freeze: {report.problems[0]} ({len(report.problems)} problem(s); "
                          "run `simaq-factory build` to repair, then freeze)")
    manifest, stats = acc.finish(out)
    _write_atomic(out / MANIFEST, (json.dumps(row, sort_keys=True) + "\n" for row in manifest))
    (out / PREVIEWS).mkdir(exist_ok=True)
    names = []
    n_previews = min(previews, recipe.dataset.n_samples)
    for i in range(n_previews):
        if progress is not None:
            progress("previews", i, n_previews)
        rel = f"{PREVIEWS}/sample_{i:06d}.png"
        render_preview(out, i, out / rel, freezing=True)
        names.append(rel)
    if progress is not None and n_previews:
        progress("previews", n_previews, n_previews)
    frozen_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    update_card(out, {"status": "frozen", "frozen_at": frozen_at, "stats": stats})
    card = read_card(out)
    recipe_json = json.loads((out / RESOLVED).read_text())["recipe"]
    _write_atomic(out / CARD, [_card_markdown(recipe_json, card, stats, manifest, names)])
    n_files = write_sha256sums(out, report.digests, progress)
    digest = hashlib.sha256((out / SUMS).read_bytes()).hexdigest()
    return {"samples": len(manifest), "files": n_files, "sha256sums_digest": digest, "stats": stats}
