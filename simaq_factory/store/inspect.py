"""Read-only views of a dataset directory: shard status and the dataset card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simaq_factory.errors import BadInput
from simaq_factory.store.dataset import read_card, read_provenance, shard_state
from simaq_factory.store.layout import GROUP_NAME, array_specs, shard_ranges
from simaq_factory.store.outdir import RESOLVED


def open_dataset_recipe(out: Path) -> tuple[Any, str]:
    """The resolved recipe and id stored in ``out``; BadInput when ``out`` is not a dataset."""
    from simaq_factory.recipe.io import resolve

    path = out / RESOLVED
    if not out.is_dir():
        raise BadInput(str(out), "no such dataset directory")
    if not path.exists() or not (out / GROUP_NAME).exists():
        raise BadInput(str(out), "not a simaq-factory dataset (no recipe.resolved.json / dataset.zarr)")
    try:
        payload = json.loads(path.read_text())
        return resolve(payload["recipe"]), payload["recipe_id"]
    except (ValueError, KeyError, TypeError) as err:
        raise BadInput(str(path), f"unreadable resolved recipe: {err}") from None


def dataset_status(out: Path) -> dict[str, Any]:
    from simaq_factory.pipeline import a_max_for

    recipe, rid = open_dataset_recipe(out)
    specs = array_specs(recipe, a_max_for(recipe))
    n_shards = len(shard_ranges(recipe.dataset.n_samples, recipe.dataset.samples_per_shard))
    counts = {"done": 0, "pending": 0, "damaged": 0}
    problems = []
    for s in range(n_shards):
        state, reason = shard_state(out, specs, s, rid)
        counts[state] += 1
        if state == "damaged":
            problems.append((s, reason))
    card = read_card(out)
    return {"recipe_id": rid, "status": card.get("status", "unknown"), "n_shards": n_shards,
            **counts, "problems": problems}


def dataset_info(out: Path, index: int | None) -> dict[str, Any]:
    recipe, _ = open_dataset_recipe(out)
    info: dict[str, Any] = {"card": read_card(out)}
    if index is not None:
        n = recipe.dataset.n_samples
        if not 0 <= index < n:
            raise BadInput("--index", f"must be in [0, {n - 1}], got {index}")
        shard = index // recipe.dataset.samples_per_shard
        prov = read_provenance(out, shard)
        if prov is None:
            raise BadInput("--index", f"sample {index} is not built yet (shard {shard} pending)")
        record = next(r for r in prov["sample_records"] if r["index"] == index)
        info["sample"] = record
        info["shard"] = {k: prov[k] for k in ("shard", "device", "versions", "timings_s") if k in prov}
    return info
