"""Read-only views of a dataset directory: shard status, the dataset card, and the checks the
hand-over commands share (metadata files readable and matching the recipe, samples built)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from simaq_factory.errors import BadInput, BuildFailed
from simaq_factory.store.dataset import (
    RECORD_DIGEST,
    Progress,
    array_layout,
    expected_layouts,
    load_provenance,
    read_card,
    read_provenance,
    record_digest,
    shard_states,
)
from simaq_factory.store.layout import (
    GROUP_NAME,
    SUMS,
    ArraySpec,
    array_specs,
    card_disagreements,
    dataset_card,
    provenance_path,
    samples_text,
    shard_ranges,
)
from simaq_factory.store.outdir import RESOLVED, VERBATIM, writer_pid
from simaq_factory.versions import built_on

META = "zarr.json"
REPAIR_HINT = "`simaq-factory build` with the same recipe repairs it"
# build rewrites damaged array metadata from the recipe, but not the card (it holds the build's records)
CARD_HINT = ("`simaq-factory build` with the same recipe rewrites it (a frozen dataset's: restore "
             "dataset.zarr/zarr.json from a good copy)")


def _check_dataset_dir(out: Path) -> None:
    """:class:`BadInput` when ``out`` is not a dataset directory holding a ``dataset.zarr``."""
    if out.exists() and not out.is_dir():
        raise BadInput(str(out), "is a file, not a dataset directory (give the directory `build -o` wrote)")
    if not out.is_dir():
        raise BadInput(str(out), "no such dataset directory")
    has_resolved, has_group = (out / RESOLVED).exists(), (out / GROUP_NAME).exists()
    if not has_resolved and not has_group:
        raise BadInput(str(out), "not a simaq-factory dataset (no recipe.resolved.json / dataset.zarr)")
    if not has_group:
        raise BadInput(str(out / GROUP_NAME), "missing: the dataset's store is gone (restore it, or remove "
                                              f"{out} and build again)")


def _read_resolved(out: Path) -> tuple[Any, str] | str:
    """The recipe and id ``recipe.resolved.json`` holds, or why it cannot be read (missing, unreadable)."""
    from simaq_factory.recipe.io import resolve

    path = out / RESOLVED
    if not path.exists():
        return ("missing: the dataset's resolved recipe is gone (`simaq-factory build` with the original "
                "recipe writes it again)")
    try:
        payload = json.loads(path.read_text())
        return resolve(payload["recipe"]), str(payload["recipe_id"])
    except OSError as err:
        return f"cannot read the resolved recipe: {err.strerror or type(err).__name__}"
    except Exception as err:  # noqa: BLE001 - not JSON, no recipe in it, a recipe that no longer resolves
        return (f"unreadable resolved recipe ({error_line(err)}); `simaq-factory build` with the original "
                "recipe rewrites it")


def open_dataset_recipe(out: Path) -> tuple[Any, str]:
    """The resolved recipe and id stored in ``out``; BadInput when ``out`` is not a dataset or its
    ``recipe.resolved.json`` cannot be read (the commands that need the recipe to work at all)."""
    _check_dataset_dir(out)
    found = _read_resolved(out)
    if isinstance(found, str):
        raise BadInput(str(out / RESOLVED), found)
    return found


def dataset_recipe_or_damage(out: Path) -> tuple[Any | None, str | None, list[str], list[str]]:
    """For ``status`` and ``verify``, which report damage rather than refuse: (recipe, id, problems,
    notes). A ``recipe.resolved.json`` that is missing or cannot be read in a dataset (its
    ``dataset.zarr`` is there) is a damaged metadata file, which a build of the original recipe
    rewrites. The id is then the card's; the recipe is ``recipe.yaml``'s when that hashes to it (a
    build without ``--set``), else None: the checks that need it are skipped, as a note says.
    :class:`BadInput` when ``out`` is not a dataset."""
    from simaq_factory.recipe.io import load_recipe, recipe_id

    _check_dataset_dir(out)
    found = _read_resolved(out)
    if not isinstance(found, str):
        return found[0], found[1], [], []
    problems = [f"{out / RESOLVED}: {found}"]
    try:
        card_id: str | None = str(read_card(out)["recipe_id"])
    except Exception:  # noqa: BLE001 - a damaged card: reported by the group metadata check
        card_id = None
    try:
        recipe = load_recipe(out / VERBATIM)
    except Exception:  # noqa: BLE001 - missing or not a recipe: no substitute
        recipe = None
    if recipe is not None and card_id is not None and recipe_id(recipe) == card_id:
        return recipe, card_id, problems, [f"checked against {out / VERBATIM}, which hashes to the card's "
                                           "recipe id"]
    return None, card_id, problems, [
        f"shards, array metadata and noise banks not checked: no recipe to check them against "
        f"({VERBATIM} is missing or does not hash to the card's recipe id, as after a build with --set)"]


def recipe_file_problems(out: Path, recipe: Any, rid: str) -> list[str]:
    """Lines naming ``recipe.resolved.json`` when its recipe does not hash to the id it records (the
    file was edited: its provenance would be false), and ``recipe.yaml`` when it is gone."""
    from simaq_factory.recipe.io import recipe_id

    problems = []
    actual = recipe_id(recipe)
    if actual != rid:
        problems.append(f"{out / RESOLVED}: its recipe hashes to {actual[:12]}, not to the id it records "
                        f"({rid[:12]}): edited since the build; `simaq-factory build` with the original "
                        "recipe rewrites it")
    if not (out / VERBATIM).is_file():
        problems.append(f"{out / VERBATIM}: the recipe as given to build is missing; `simaq-factory build` "
                        "with the same recipe writes it again")
    return problems


def _short(value: Any, limit: int = 30) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def card_problem(out: Path, recipe: Any, rid: str) -> str | None:
    """A line naming ``dataset.zarr/zarr.json`` when fields of the dataset card that the recipe
    decides (:data:`~simaq_factory.store.layout.CARD_FROM_RECIPE`) disagree with it; None when they agree. The card must read."""
    from simaq_factory.acquisition.angles import a_max_for

    card = read_card(out)
    wrong = card_disagreements(card, dataset_card(recipe, rid, a_max_for(recipe)))
    if not wrong:
        return None
    shown = ", ".join(f"{k} {_short(card.get(k))} (recipe: {_short(v)})" for k, v in list(wrong.items())[:3])
    more = f", and {len(wrong) - 3} more" if len(wrong) > 3 else ""
    return f"{out / GROUP_NAME / META}: the dataset card disagrees with the recipe: {shown}{more}; {CARD_HINT}"


def check_shards_done(out: Path, recipe: Any, rid: str, specs: dict[str, ArraySpec], shards: list[int],
                      nothing: str) -> None:
    """:class:`BuildFailed` naming the first of ``shards`` that is not done (its files fail their
    checksums, its record is gone or damaged), before anything is read: ``nothing`` says what was
    not made ("nothing exported"). The remedy: a build, or for a frozen dataset a good copy."""
    not_done = [(s, st) for s, st in zip(shards, shard_states(out, specs, shards, rid)) if st[0] != "done"]
    if not not_done:
        return
    shard, (state, reason) = not_done[0]
    try:
        frozen = read_card(out).get("status") == "frozen"
    except Exception:  # noqa: BLE001 - an unreadable card: open_checked has said so already
        frozen = False
    hint = ("the dataset is frozen: restore it from a good copy" if frozen
            else "`simaq-factory build` with the same recipe repairs it")
    samples = shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard)[shard]
    raise BuildFailed(f"shard {shard} ({samples_text(samples)}) of {out} is {state}: {reason}; {nothing}; {hint}")


def dataset_specs(recipe: Any) -> dict[str, ArraySpec]:
    from simaq_factory.acquisition.angles import a_max_for

    return array_specs(recipe, a_max_for(recipe))


def error_line(err: BaseException) -> str:
    """An exception as one line of at most 200 characters: its type, then its words."""
    text = " ".join(str(err).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _load_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        payload = json.load(f)
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    return payload


def group_metadata_problem(out: Path) -> str | None:
    """A line naming ``dataset.zarr/zarr.json`` when the group metadata (the dataset card) is
    missing, unreadable or not a Zarr v3 group; None when it reads."""
    path = out / GROUP_NAME / META
    if not path.is_file():
        return f"{path}: group metadata (dataset card) is missing"
    try:
        meta = _load_json(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return f"{path}: unreadable group metadata (dataset card): {error_line(err)}"
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        return (f"{path}: not Zarr v3 group metadata (zarr_format {meta.get('zarr_format')!r}, "
                f"node_type {meta.get('node_type')!r})")
    if not isinstance(meta.get("attributes"), dict):
        return f"{path}: group metadata holds no dataset card (attributes)"
    return None


def _same_fill(a: Any, b: Any) -> bool:
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return bool(a == b)
    return (math.isnan(fa) and math.isnan(fb)) or fa == fb


def array_metadata_problem(out: Path, spec: ArraySpec) -> str | None:
    """A line naming the array's ``zarr.json`` when it is missing, unreadable, or does not match
    the recipe's layout: shape, dtype, shard and chunk shape, fill value, and then the whole
    document as build writes it (codecs, byte order, shard index, dimension names; attributes
    aside); None when it matches."""
    import zarr

    path = out / GROUP_NAME / spec.name / META
    if not path.is_file():
        return f"{path}: array metadata of {spec.name} is missing"
    try:
        _load_json(path)
        arr = zarr.open_array(out / GROUP_NAME / spec.name, mode="r")
    except Exception as err:  # noqa: BLE001 - any parse failure is damage to report
        return f"{path}: unreadable array metadata of {spec.name}: {error_line(err)}"
    found = (str(arr.dtype), tuple(arr.shape), arr.shards, tuple(arr.chunks))
    expected = (spec.dtype, tuple(spec.shape), tuple(spec.shards), tuple(spec.chunks))
    if found != expected:
        return (f"{path}: array metadata of {spec.name} does not match the recipe: dtype {found[0]} shape "
                f"{found[1]} shards {found[2]} chunks {found[3]}, expected dtype {expected[0]} shape "
                f"{expected[1]} shards {expected[2]} chunks {expected[3]}")
    if not _same_fill(arr.fill_value, spec.fill_value):
        return (f"{path}: array metadata of {spec.name} does not match the recipe: fill value "
                f"{arr.fill_value}, expected {spec.fill_value}")
    # the rest of the document too: a byte order or shard index location edited in the codecs
    # decodes intact shard files to garbage (or not at all), and no checksum of theirs can see it
    found_doc, expected_doc = array_layout(arr.metadata), expected_layouts({spec.name: spec})[spec.name]
    differ = sorted(k for k in found_doc.keys() | expected_doc.keys() if found_doc.get(k) != expected_doc.get(k))
    if differ:
        return (f"{path}: array metadata of {spec.name} does not match the recipe: its {', '.join(differ)} "
                "differ from what build writes (edited or damaged; the shard files are judged by their "
                "checksums)")
    return None


def metadata_problems(out: Path, recipe: Any, rid: str,
                      specs: dict[str, ArraySpec]) -> tuple[list[str], str | None, dict[str, str]]:
    """What ``status`` and ``verify`` report of the dataset's own files: (every problem line, in order:
    the recipe files, the group metadata or a card that disagrees with the recipe, the arrays'
    metadata; the group problem or None, which also means the card reads; {array: problem})."""
    arrays = {}
    for name, spec in specs.items():
        problem = array_metadata_problem(out, spec)
        if problem is not None:
            arrays[name] = problem
    group = group_metadata_problem(out)
    card = group if group is not None else card_problem(out, recipe, rid)
    lines = recipe_file_problems(out, recipe, rid) + ([card] if card else []) + list(arrays.values())
    return lines, group, arrays


def read_card_checked(out: Path) -> dict[str, Any]:
    """The dataset card; a one-line :class:`BuildFailed` naming ``dataset.zarr/zarr.json`` when it
    cannot be read."""
    problem = group_metadata_problem(out)
    if problem is not None:
        raise BuildFailed(f"{problem}; {CARD_HINT}")
    return read_card(out)


def open_checked(out: Path, specs: dict[str, ArraySpec], names: list[str]) -> dict[str, Any]:
    """Open the arrays ``names`` of ``out`` (laid out as ``specs``) for reading after checking the
    group's and their metadata files; a one-line :class:`BuildFailed` naming the first damaged file
    otherwise."""
    import zarr

    group_problem = group_metadata_problem(out)
    if group_problem is not None:
        raise BuildFailed(f"{group_problem}; {CARD_HINT}")
    problem = next((p for p in (array_metadata_problem(out, specs[n]) for n in names) if p is not None), None)
    if problem is not None:
        raise BuildFailed(f"{problem}; {REPAIR_HINT}")
    return {n: zarr.open_array(out / GROUP_NAME / n, mode="r") for n in names}


def built_records(
    out: Path, recipe: Any, indices: list[int], flag: str = "--index"
) -> dict[int, dict[str, Any]]:
    """Each index's provenance record, checking first that every index is in range and built.

    Raises :class:`BadInput` naming ``flag`` for the first index out of range or not built yet
    (its shard has no provenance record), and :class:`BuildFailed` naming the record when it cannot
    be read or fails its own digest (edited: what it says of the sample cannot be trusted), before
    anything is read or written.
    """
    n = recipe.dataset.n_samples
    for i in indices:
        if not 0 <= i < n:
            raise BadInput(flag, f"must be in [0, {n - 1}], got {i}")
    per_shard: dict[int, dict[int, dict[str, Any]]] = {}
    records = {}
    for i in indices:
        shard = i // recipe.dataset.samples_per_shard
        if shard not in per_shard:
            prov, unreadable = load_provenance(out, shard)
            if unreadable is None and prov is not None and RECORD_DIGEST in prov \
                    and prov[RECORD_DIGEST] != record_digest(prov):  # its parameters may be anything
                unreadable = f"{provenance_path(out, shard)} does not match its digest (edited or damaged)"
            if unreadable is not None:
                raise BuildFailed(f"sample {i}: shard {shard} is damaged: {unreadable}; {REPAIR_HINT}")
            per_shard[shard] = {r.get("index"): r for r in (prov or {}).get("sample_records", [])
                                if isinstance(r, dict)}
        if i not in per_shard[shard]:
            raise BadInput(flag, f"sample {i} is not built yet (shard {shard} pending)")
        records[i] = per_shard[shard][i]
    return records


def dataset_status(out: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Shard counts plus dataset-level problems (metadata files, noise banks) and a verdict
    computed from the files, kept apart from the status the card records. ``progress`` is told the
    shard checksums as they are computed."""
    from simaq_factory.store.banks import CARD_KEY as BANKS_CARD_KEY
    from simaq_factory.store.banks import bank_problems

    recipe, rid, recipe_problems, notes = dataset_recipe_or_damage(out)
    if recipe is None:
        return _status_without_recipe(out, rid, recipe_problems, notes)
    specs = dataset_specs(recipe)
    n_shards = len(shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard))
    counts = {"done": 0, "pending": 0, "damaged": 0}
    shard_problems = []
    meta_problems, group_problem, _ = metadata_problems(out, recipe, rid, specs)
    meta_problems = recipe_problems + meta_problems
    # a frozen dataset had every record when it was sealed: one gone is damage, not work pending
    # (build refuses to write there); as build and freeze say (check_sealed_intact)
    frozen = group_problem is None and read_card(out).get("status") == "frozen"
    for s, (state, reason) in enumerate(shard_states(out, specs, range(n_shards), rid, progress)):
        if state == "pending" and frozen:
            state, reason = "damaged", "provenance record missing from a frozen dataset"
        counts[state] += 1
        if state == "damaged":
            shard_problems.append((s, reason))
    banks_pending = False
    if group_problem is None:
        card = read_card(out)
        card_status = str(card.get("status", "unknown"))
        # a build stopped before it recorded its noise banks (they come before any shard): unfinished
        banks_pending = card_status == "building" and not card.get(BANKS_CARD_KEY) and not counts["done"]
        banks = [] if banks_pending else bank_problems(out, recipe)
    else:  # the card holds the noise-bank record too: banks cannot be checked
        card_status = "unreadable"
        banks = []
    dataset_problems = meta_problems + banks
    parts = [f"{k} {what}" for k, what in ((counts["damaged"], "shard(s)"),
                                           (len(meta_problems), "metadata file(s)"),
                                           (len(banks), "noise bank(s)")) if k]
    if parts:
        verdict = "damaged: " + ", ".join(parts)
    elif card_status == "frozen" and not (out / SUMS).is_file():
        verdict = "incomplete: freeze interrupted (no SHA256SUMS); run freeze again"
    elif counts["pending"] or banks_pending:
        verdict = "incomplete: " + ", ".join(
            ([f"{counts['pending']} shard(s)"] if counts["pending"] else []) + (["noise banks"] if banks_pending else [])
        ) + " pending"
    else:
        verdict = "complete"
    return {"recipe_id": rid, "card_status": card_status, "verdict": verdict,
            "state": verdict.split(":")[0],  # complete | incomplete | damaged, for scripts
            "writer_pid": writer_pid(out),
            "n_shards": n_shards, **counts, "problems": shard_problems,
            "dataset_problems": dataset_problems, "metadata_damaged": len(meta_problems),
            "banks_damaged": len(banks) if group_problem is None else None, "banks_pending": banks_pending,
            "notes": notes}


def _status_without_recipe(out: Path, rid: str | None, recipe_problems: list[str],
                           notes: list[str]) -> dict[str, Any]:
    """:func:`dataset_status` of a dataset whose recipe is lost: the damaged metadata files it can
    name (the resolved recipe, a damaged card), shards and banks not counted (None)."""
    group_problem = group_metadata_problem(out)
    problems = recipe_problems + ([group_problem] if group_problem else [])
    card_status = "unreadable" if group_problem else str(read_card(out).get("status", "unknown"))
    verdict = f"damaged: {len(problems)} metadata file(s)"
    return {"recipe_id": rid, "card_status": card_status, "verdict": verdict, "state": "damaged",
            "writer_pid": writer_pid(out), "n_shards": None, "done": None, "pending": None, "damaged": None,
            "problems": [], "dataset_problems": problems, "metadata_damaged": len(problems),
            "banks_damaged": None, "banks_pending": False, "notes": notes}


def check_sealed_intact(out: Path) -> None:
    """For a frozen dataset that a build or freeze finds with nothing to do: the shard files still
    match their checksums and the metadata and banks are whole (what ``status`` checks), else
    :class:`BuildFailed` naming the first problem. A frozen dataset is never rewritten, so the
    remedy is a good copy, not a build."""
    st = dataset_status(out)
    verdict = st["verdict"]
    if verdict == "complete":
        from simaq_factory.store.verify import sealed_problems  # verify imports this module

        sealed = sealed_problems(out)  # manifest, card, records, banks, previews: small files
        if not sealed:
            return
        verdict, first = f"damaged: {len(sealed)} sealed file(s)", sealed[0]
    else:
        first = (f"shard {st['problems'][0][0]}: {st['problems'][0][1]}" if st["problems"]
                 else (st["dataset_problems"] or [""])[0])
    raise BuildFailed(f"{out} is frozen but {verdict} ({first}); a frozen dataset is not "
                      f"rewritten: restore it from a good copy (`simaq-factory verify {out}` lists "
                      "every damaged file)")


def dataset_info(out: Path, index: int | None) -> dict[str, Any]:
    recipe, _ = open_dataset_recipe(out)
    info: dict[str, Any] = {"card": read_card_checked(out)}
    if index is not None:
        record = built_records(out, recipe, [index])[index]
        shard = index // recipe.dataset.samples_per_shard
        prov = read_provenance(out, shard) or {}
        info["sample"] = record
        info["shard"] = {k: v for k, v in prov.items() if k != "sample_records"}  # the sample's is above
    return info


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _applied(section: dict[str, Any]) -> list[str]:
    """Names of the stages of an artifacts record that were applied, with their main parameter."""
    said = []
    for name, rec in section.items():
        if not isinstance(rec, dict) or not rec.get("applied", "beads" in rec):
            continue
        if name == "fiducials":
            said.append(f"{len(rec.get('beads', []))} gold bead(s)")
        elif name == "blur":
            said.append(f"blur sigma {_fmt(rec.get('sigma'))} vox")
        elif "amplitude" in rec:
            said.append(f"{name.replace('_', ' ')} amplitude {_fmt(rec['amplitude'])}")
        elif "strength" in rec:
            said.append(f"{name} strength {_fmt(rec['strength'])}")
        elif "thickness" in rec:
            said.append(f"{name.replace('_', ' ')} {_fmt(rec['thickness'])} reference voxels")
        else:
            said.append(name.replace("_", " "))
    return said or ["none"]


def _angles_line(angles: dict[str, Any]) -> str:
    deg = angles.get("recon_deg") or []
    if not deg:
        return "no angles recorded"
    return (f"{len(deg)} of {angles.get('n_nominal', '?')} nominal, {min(deg):.2f}° to {max(deg):.2f}° "
            f"(span {_fmt(angles.get('span_deg'))}°, step {_fmt(angles.get('step_deg'))}°)")


def info_lines(out: Path, info: dict[str, Any], specs: dict[str, ArraySpec]) -> list[str]:
    """The human summary ``simaq-factory info`` prints (``--json`` prints ``info`` whole)."""
    card = info["card"]
    status = str(card.get("status", "unknown"))
    if status == "frozen" and card.get("frozen_at"):
        status += f" {card['frozen_at']}"
    shape = card.get("shape_zyx") or []
    n = card.get("n_samples", "?")
    tilt = card.get("tilt_axis", "z")
    lines = [
        f"dataset: {out} ({status})",
        f"recipe id: {card.get('recipe_id', '?')}",
        f"samples: {n} of {'x'.join(map(str, shape))} voxels (z, y, x), seed {card.get('seed', '?')}, "
        f"{card.get('samples_per_shard', '?')} per shard",
        f"{'tilt axes' if isinstance(tilt, list) else 'tilt axis'}: "
        f"{', '.join(tilt) if isinstance(tilt, list) else tilt}, at most {card.get('a_max', '?')} angles per "
        "tilt series",
        "arrays: " + ", ".join(f"{name} {spec.dtype} {tuple(spec.shape[1:])}" for name, spec in specs.items()),
        "classes: " + ", ".join(f"{k} {v}" for k, v in sorted((card.get("label_map") or {}).items(),
                                                               key=lambda kv: int(kv[0])))
        + f" ({card.get('ignore_label', 255)} = unlabelled)",
    ]
    fractions = (card.get("stats") or {}).get("label_fractions")
    if fractions:
        lines.append("class fractions: " + ", ".join(f"{k} {v:.4f}" for k, v in fractions.items()))
    software = card.get("software") or {}
    if software:
        lines.append("software: " + ", ".join(f"{k} {v}" for k, v in software.items()))
    sample = info.get("sample")
    if sample is not None:
        shard = info.get("shard") or {}
        seed = sample.get("seed") or {}
        spec = sample.get("phantom_spec") or {}
        cells = spec.get("cells") or []
        lines += [
            "",
            f"sample {sample.get('index')} (shard {shard.get('shard', '?')}, rendered on {built_on(shard) if shard else '?'}):",
            f"  seed: root {seed.get('root', '?')}, spawn key {seed.get('spawn_key', '?')}",
            f"  cells: {len(cells)}; vacuoles {sum(len(c.get('vacuoles') or []) for c in cells)}, lipid droplets "
            f"{sum(len(c.get('droplets') or []) for c in cells)}, nuclei "
            f"{sum(1 for c in cells if c.get('nucleus'))}; supersampling {spec.get('supersample', '?')}",
            "  phantom artifacts: " + ", ".join(_applied(sample.get("artifacts") or {})),
        ]
        acquisitions = sample.get("acquisitions") or [
            {"axis": None, "angles": sample.get("angles") or {},
             "sinogram_artifacts": sample.get("sinogram_artifacts") or {}}]
        for acq in acquisitions:
            about = "" if acq.get("axis") is None else f" (about {acq.get('tilt_axis', acq['axis'])})"
            lines.append(f"  angles{about}: {_angles_line(acq.get('angles') or {})}")
            lines.append(f"  sinogram artifacts{about}: " + ", ".join(_applied(acq.get("sinogram_artifacts") or {})))
        timings = sample.get("timings_s") or {}
        if timings:
            lines.append(f"  time: {sum(timings.values()):.2f} s (" +
                         ", ".join(f"{k} {v:.2f}" for k, v in timings.items()) + ")")
    lines += ["", "(the whole card and sample record: --json)"]
    return lines
