"""PhantomSpec (phantom/spec.py): every field survives the JSON round trip, schema-1 dicts load, and
malformed dicts are refused."""

from __future__ import annotations

import json

import pytest

from simaq_factory.phantom.spec import (
    SCHEMA_VERSION,
    CellSpec,
    DeformationSpec,
    DropletSpec,
    NucleusSpec,
    PhantomSpec,
    VacuoleSpec,
)


def _spec() -> PhantomSpec:
    cell = CellSpec(
        center=(10.0, 20.5, 21.0), radii=(6.0, 8.0, 9.5), wall_width=1.5, lac=0.3, wall_lac=0.45,
        vacuoles=(VacuoleSpec(center=(10.0, 19.0, 20.0), radii=(2.0, 2.5, 3.0), lac=0.1),
                  VacuoleSpec(center=(11.0, 22.0, 22.0), radii=(1.0, 1.0, 1.0), lac=0.12, cluster=0)),
        droplets=(DropletSpec(center=(9.0, 24.0, 18.0), radius=1.2, lac=0.6),
                  DropletSpec(center=(12.0, 23.0, 23.0), radius=0.7, lac=0.6, converted=True)),
        nucleus=NucleusSpec(center=(10.0, 20.0, 24.0), radii=(2.0, 2.0, 2.5), lac=0.4),
    )
    return PhantomSpec(shape=(24, 40, 44), scale=1.25, cells=(cell,),
                       deformation=DeformationSpec(mode="3d", seed=17, sigma=4.0, std=0.0, spacing=8.0),
                       supersample=2)


def test_every_field_survives_the_json_round_trip() -> None:
    spec = _spec()
    back = PhantomSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.schema_version == SCHEMA_VERSION
    cell = back.cells[0]
    assert [v.cluster for v in cell.vacuoles] == [-1, 0] and [v.fragment for v in cell.vacuoles] == [False, True]
    assert [d.converted for d in cell.droplets] == [False, True]
    assert cell.nucleus == spec.cells[0].nucleus and back.supersample == 2
    assert back.deformation == DeformationSpec(mode="3d", seed=17, sigma=4.0, std=0.0, spacing=8.0)


def test_a_schema_1_dict_loads_with_the_defaults_of_what_it_lacks() -> None:
    d = _spec().to_dict()
    d["schema_version"] = 1
    for key in ("deformation", "supersample"):
        del d[key]
    del d["cells"][0]["nucleus"]
    old = PhantomSpec.from_dict(d)
    assert old.schema_version == 1 and old.deformation is None and old.supersample == 1
    assert old.cells[0].nucleus is None and old.cells[0].droplets == _spec().cells[0].droplets


def test_outer_radii_add_the_wall_on_every_axis() -> None:
    assert _spec().cells[0].outer_radii == (7.5, 9.5, 11.0)


def test_malformed_dicts_are_refused() -> None:
    good = _spec().to_dict()
    wrong_label = json.loads(json.dumps(good))
    wrong_label["cells"][0]["vacuoles"][0]["label"] = 3
    with pytest.raises(ValueError, match="label"):
        PhantomSpec.from_dict(wrong_label)
    four = json.loads(json.dumps(good))
    four["cells"][0]["center"] = [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="3 numbers"):
        PhantomSpec.from_dict(four)
    with pytest.raises(ValueError):
        DeformationSpec(mode="3d", seed=1, sigma=4.0, std=-0.1, spacing=8.0)
