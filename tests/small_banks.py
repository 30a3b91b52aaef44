"""Recipe overrides that shrink the noise banks for tests that build small datasets.

The smoke recipe's banks (8 Perlin cubes of 64³, 4 crack blocks of 32³) take ~3.3 s of a 3.6 s
32³ build on two cores; tests whose subject is not the banks build with 2 of each at 32³ instead.
Banks are part of the recipe id: every build into one output, and every ``load_recipe`` compared
with it, takes the same overrides.
"""

from __future__ import annotations

SETS = (
    "artifacts.banks.perlin_hi_3d.entries=2",
    "artifacts.banks.perlin_hi_3d.edge=32",
    "artifacts.banks.cracks.entries=2",
)
ARGS = tuple(a for s in SETS for a in ("--set", s))
