"""Recipe loading: defaults, canonical id, overrides, and one-line errors with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from simaq_factory.cli.main import main
from simaq_factory.recipe.fields import Dist, RecipeError
from simaq_factory.recipe.io import apply_overrides, load_recipe, recipe_id, recipe_to_json, resolve
from simaq_factory.yamlio import load_yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke.yaml"


def test_every_shipped_recipe_resolves_and_round_trips():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        rec = load_recipe(path)
        again = resolve(json.loads(json.dumps(recipe_to_json(rec))))
        assert again == rec, path.name
        assert recipe_id(again) == recipe_id(rec)


def test_defaults_fill_and_id_ignores_execution_and_key_order():
    a = resolve({"dataset": {"n_samples": 3, "shape": [32, 32, 32]}, "seed": 5})
    b = resolve({"seed": 5, "dataset": {"shape": [32, 32, 32], "n_samples": 3},
                 "execution": {"workers": 7, "device": "cpu"}})
    assert recipe_id(a) == recipe_id(b)
    c = resolve({"dataset": {"n_samples": 3, "shape": [32, 32, 32]}, "seed": 6})
    assert recipe_id(c) != recipe_id(a)
    assert len(recipe_id(a)) == 64
    assert a.acquisition.missing_fraction == 0.2  # reference default filled in


def test_overrides_parse_yaml_values_and_create_sections():
    data = apply_overrides({"dataset": {"n_samples": 2}}, ["dataset.n_samples=9", "seed=3",
                                                          "acquisition.tilt_span_deg={low: 60, high: 70}"])
    rec = resolve(data)
    assert rec.dataset.n_samples == 9 and rec.seed == 3
    assert rec.acquisition.tilt_span_deg == Dist.uniform(60, 70)


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as the string '1e-3'; recipes and --set read it as YAML 1.2 does
    path = tmp_path / "r.yaml"
    path.write_text(SMOKE.read_text().replace("jitter_deg: 0.1", "jitter_deg: 2.5E-1"))
    rec = load_recipe(path, ["acquisition.missing_fraction=1e-2"])
    assert rec.acquisition.jitter_deg == 0.25 and rec.acquisition.missing_fraction == 0.01
    assert rec == load_recipe(SMOKE, ["acquisition.jitter_deg=0.25", "acquisition.missing_fraction=0.01"])
    assert rec == load_recipe(str(path), ["acquisition.missing_fraction=1e-2"])  # a str path for library users
    assert load_yaml("a: [1e-3, -2E+5, .5e1, '1e-3', 1e3x]") == {"a": [0.001, -2e5, 5.0, "1e-3", "1e3x"]}
    assert yaml.safe_load("a: 1e-3") == {"a": "1e-3"}  # plain SafeLoader unchanged


def test_numbers_are_yaml_1_2_and_merge_keys_work(tmp_path):
    # YAML 1.1 (PyYAML): 017 is octal 15, 0b101 is 5, 12:00:00 is base-60 43200
    assert load_yaml("a: [017, 08, 0x1F, 0o17, 1_000, -0, +4, 1., -.inf, 0b101, 12:00:00, 1:30]") == {
        "a": [17, 8, 31, 15, 1000, 0, 4, 1.0, float("-inf"), "0b101", "12:00:00", "1:30"]}
    assert yaml.safe_load("a: [017, 12:00:00]") == {"a": [15, 43200]}  # plain SafeLoader unchanged
    assert load_yaml("a: [true, False, TRUE, yes, no, on, off]") == {"a": [True, False, True, "yes", "no", "on", "off"]}
    assert load_recipe(SMOKE, ["phantom.deformation.mode=off"]).phantom.deformation.mode == "off"  # was False
    assert load_yaml("b: &r {x: 1, y: 2}\nc:\n  <<: *r\n  y: 3\n") == {"b": {"x": 1, "y": 2}, "c": {"x": 1, "y": 3}}
    with pytest.raises(yaml.YAMLError, match="unhashable key"):
        load_yaml("? [a, b]\n: 1\n")
    with pytest.raises(yaml.YAMLError, match="duplicate key 'y'"):
        load_yaml("c: {x: 1, y: 2, y: 3}")
    # the init template's walltime edited to the most common value stays a string; a leading-zero seed is decimal
    path = tmp_path / "r.yaml"
    path.write_text("seed: 017\nexecution:\n  slurm:\n    walltime: 12:00:00\n")
    rec = load_recipe(path)
    assert rec.seed == 17 and rec.execution.slurm.walltime == "12:00:00"
    assert load_recipe(SMOKE, ["execution.slurm.walltime=24:00:00"]).execution.slurm.walltime == "24:00:00"


def test_unknown_keys_suggest_the_closest_name_in_recipes_and_training_configs():
    from simaq_train.config import load_config

    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, ["dataset.n_sample=3"])
    assert str(err.value) == ("dataset.n_sample: unknown key; did you mean 'n_samples'? expected one of "
                              "chunk_z, n_samples, outputs, samples_per_shard, shape")
    with pytest.raises(RecipeError) as err:
        load_config(None, ["optim.max_step=3"])
    assert "optim.max_step: unknown key; did you mean 'max_steps'? expected one of accumulate," in str(err.value)
    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, ["dataset.zzz=3"])
    assert "did you mean" not in str(err.value)


def test_overrides_of_one_field_keep_the_rest_of_a_default_distribution():
    rec = load_recipe(SMOKE, ["phantom.cell.radius.mean=55", "acquisition.offset_deg.std=2",
                              "artifacts.blur.sigma.max=4"])
    default = resolve({})
    assert rec.phantom.cell.radius == Dist.normal(55, 2.5, 40, 60)
    assert rec.acquisition.offset_deg == Dist.normal(0, 2, -15, 15)
    assert rec.artifacts.blur.sigma == Dist.normal(3, 2, 1, 4)
    # the sections the overrides created hold nothing but defaults besides the field set
    assert rec.phantom.cell.lac == default.phantom.cell.lac and rec.dataset == load_recipe(SMOKE).dataset
    with pytest.raises(RecipeError) as err:  # a field of another form is still refused
        load_recipe(SMOKE, ["artifacts.blur.sigma.low=1"])
    assert err.value.path == "artifacts.blur.sigma"


def test_dist_forms_and_sampling_are_explicit_rng():
    d = Dist.parse({"mean": 50, "std": 2.5, "min": 40, "max": 60}, "x")
    draws = d.sample(np.random.default_rng(1), size=10000)
    assert draws.min() >= 40 and draws.max() <= 60
    assert abs(draws.mean() - 50) < 0.1
    np.testing.assert_array_equal(draws, d.sample(np.random.default_rng(1), size=10000))
    assert Dist.parse(3, "x") == Dist.const(3)
    assert Dist.parse({"low": 1, "high": 2}, "x").sample(np.random.default_rng(0)) < 2


BAD = [
    # (recipe mapping or override, field named in the message)
    ({"dataset": {"n_samples": "four"}}, "dataset.n_samples"),
    ({"dataset": {"n_samples": 0}}, "dataset.n_samples"),
    ({"dataset": {"n_samples": 2.5}}, "dataset.n_samples"),
    ({"dataset": {"shape": [64, 64]}}, "dataset.shape"),
    ({"dataset": {"shape": [64, 64, 32]}}, "dataset.shape"),
    ({"dataset": {"shape": [64, 64, 4]}}, "dataset.shape[2]"),
    ({"dataset": {"samples_per_shard": 9, "n_samples": 2}}, "dataset.samples_per_shard"),
    ({"dataset": {"outputs": {"recon_dtype": "int8"}}}, "dataset.outputs.recon_dtype"),
    ({"dataset": {"outputs": {"sinogram": "yes"}}}, "dataset.outputs.sinogram"),
    ({"dataset": {"colour": 3}}, "dataset.colour"),
    ({"datset": {}}, "datset"),
    ({"execution": {"device": "tpu"}}, "execution.device"),
    ({"execution": {"device": "cuda:x"}}, "execution.device"),
    ({"seed": -1}, "seed"),
    ({"seed": "abc"}, "seed"),
    ({"acquisition": {"tilt_span_deg": {"low": 90, "high": 200}}}, "acquisition.tilt_span_deg.high"),
    ({"acquisition": {"tilt_span_deg": {"mean": 100, "std": 5}}}, "acquisition.tilt_span_deg.min"),
    ({"acquisition": {"tilt_span_deg": {"mean": 100, "std": 5, "min": 80}}}, "acquisition.tilt_span_deg.max"),
    ({"acquisition": {"tilt_span_deg": {"low": 120, "high": 90}}}, "acquisition.tilt_span_deg"),
    ({"acquisition": {"missing_fraction": 1.0}}, "acquisition.missing_fraction"),
    ({"acquisition": {"step_deg": -1}}, "acquisition.step_deg"),
    ({"acquisition": {"jitter_deg": {"mean": 1}}}, "acquisition.jitter_deg"),
    ({"acquisition": {"offset_deg": {"mean": 0, "sd": 1}}}, "acquisition.offset_deg.sd"),
    ({"reconstruction": {"filter": "butterworth"}}, "reconstruction.filter"),
    ({"execution": {"workers": 0}}, "execution.workers"),
    ({"phantom": 7}, "phantom"),
    ({"phantom": {"nonsense": 1}}, "phantom.nonsense"),
    ({"version": 99}, "version"),
    ({"phantom": {"deformation": {"mode": "4d"}}}, "phantom.deformation.mode"),
    ({"phantom": {"antialias": {"supersample": 9}}}, "phantom.antialias.supersample"),
    ({"phantom": {"nucleus": {"enabled": "maybe"}}}, "phantom.nucleus.enabled"),
    ({"phantom": {"nucleus": {"radius_fraction": 1.5}}}, "phantom.nucleus.radius_fraction"),
    ({"reconstruction": {"method": "art"}}, "reconstruction.method"),
    ({"reconstruction": {"iterations": 0}}, "reconstruction.iterations"),
    ({"acquisition": {"sinogram": {"poisson": {"attenuation_scale": -1}}}},
     "acquisition.sinogram.poisson.attenuation_scale"),
    ({"artifacts": {"blur": {"kernel_size": 4}}}, "artifacts.blur.kernel_size"),
    # execution fields that LocalCluster / sbatch would only reject after the build started
    ({"execution": {"memory_limit": "lots"}}, "execution.memory_limit"),
    ({"execution": {"memory_limit": "-2GB"}}, "execution.memory_limit"),
    ({"execution": {"slurm": {"memory": "32 gigs"}}}, "execution.slurm.memory"),
    ({"execution": {"slurm": {"walltime": "2h"}}}, "execution.slurm.walltime"),
]


@pytest.mark.parametrize("data,field", BAD, ids=[f for _, f in BAD])
def test_bad_fields_name_the_field(data, field):
    with pytest.raises(RecipeError) as info:
        resolve(data)
    assert info.value.path == field, str(info.value)
    assert "\n" not in str(info.value)


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("data,field", BAD[:8] + BAD[10:14], ids=[f for _, f in BAD[:8] + BAD[10:14]])
def test_cli_build_bad_recipe_exit_2_one_line_no_output(tmp_path, data, field):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(_write(tmp_path, data)), "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["validate", "missing.yaml"], "missing.yaml"),
        (["validate", "{dir}"], "not a file"),
        (["validate", "{bad_yaml}"], "invalid YAML at line"),
        (["validate", "{list_yaml}"], "mapping"),
        (["validate", "{dup_yaml}"], "duplicate key 'dataset' (first at line 1)"),
        (["build", str(SMOKE), "-o", "{out}", "--scheduler", "notanaddress"], "--scheduler"),
        (["build", str(SMOKE), "-o", "{out}", "--scheduler", ""], "--scheduler: empty address"),
        (["validate", str(SMOKE), "--set", "dataset.n_samples"], "--set"),
        (["validate", str(SMOKE), "--set", "dataset.n_samples.x=1"], "dataset.n_samples"),
        (["build", str(SMOKE), "-o", "{file}"], "not a directory"),
        (["build", str(SMOKE), "-o", "{out}", "--device", "cuda:7"], "--device: "),
        (["build", str(SMOKE), "-o", "{out}", "--workers", "0"], "--workers: must be >= 1"),
        # memory_limit auto = RAM / workers: below a worker's need they paused and the build waited
        (["build", str(SMOKE), "-o", "{out}", "--workers", "4096"], "--workers: 4096 LocalCluster workers share"),
        (["build", str(SMOKE), "-o", "{out}", "--set", "execution.workers=0"], "execution.workers: must be >= 1"),
        (["build", str(SMOKE), "-o", "{out}", "--set", "execution.memory_limit=8 bananas"],
         "execution.memory_limit"),
        (["build", str(SMOKE), "-o", "{out}", "--set", "execution.memory_limit=100MB"],  # Dask's KilledWorker
         "execution.memory_limit: memory_limit '100MB' is less than a worker needs"),
        # alternatives given together: refused, not one of them silently ignored
        (["build", str(SMOKE), "-o", "{out}", "--cluster", "inline", "--scheduler", "tcp://127.0.0.1:9"],
         "--scheduler: cannot be combined with --cluster inline"),
        (["build", str(SMOKE), "-o", "{out}", "--scheduler", "tcp://127.0.0.1:9", "--cluster", "slurm"],
         "--scheduler: cannot be combined with --cluster slurm"),
        (["build", str(SMOKE), "-o", "{out}", "--cluster", "inline", "--workers", "2"], "--workers: has no effect"),
        (["build", str(SMOKE), "-o", "{out}", "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"],
         "--workers: has no effect with --scheduler"),
        (["build", "{empty_yaml}", "-o", "{out}", "--cluster", "inline"], "the recipe sets no field"),
        (["validate", "{empty_yaml}"], "the recipe sets no field"),  # validate passes what build builds
        (["build", str(SMOKE), "-o", "{out}", "--set", "dataset.n_samples=1"],
         "also --set dataset.samples_per_shard=1"),
    ],
)
def test_cli_bad_paths_and_flags(tmp_path, args, needle):
    (tmp_path / "bad.yaml").write_text("dataset:\n  n_samples: [1\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "dup.yaml").write_text("dataset:\n  shape: [64, 64, 64]\nseed: 1\ndataset:\n  n_samples: 2\n")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty.yaml").write_text("# to do\n")
    subs = {"{dir}": str(tmp_path), "{bad_yaml}": str(tmp_path / "bad.yaml"), "{empty_yaml}": str(tmp_path / "empty.yaml"),
            "{list_yaml}": str(tmp_path / "list.yaml"), "{file}": str(tmp_path / "afile"),
            "{out}": str(tmp_path / "out"), "{dup_yaml}": str(tmp_path / "dup.yaml")}
    args = [subs.get(a, a) for a in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_validate_json_is_one_object_matching_the_text():
    result = CliRunner().invoke(main, ["validate", str(SMOKE), "--json", "--set", "dataset.n_samples=6"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the whole of stdout: nothing else is printed
    rec = load_recipe(SMOKE, ["dataset.n_samples=6"])
    assert data["recipe_id"] == recipe_id(rec) and data["resolved"] == recipe_to_json(rec)
    assert (data["n_samples"], data["n_shards"]) == (6, 3)
    assert data["banks"]["cracks"] == {"dtype": "float32", "shape": [4, 32, 32, 32], "bytes": 4 * 4 * 32**3}
    text = CliRunner().invoke(main, ["validate", str(SMOKE), "--set", "dataset.n_samples=6"]).output
    mib = data["estimated_bytes"] / 2**20
    assert f"estimated output: {mib:.1f} MiB uncompressed" in text


def test_cli_output_into_a_closed_pipe_ends_quietly():
    """`simaq-factory validate r.yaml | head -1`: the reader goes away; no error line, exit 141."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "simaq_factory.cli.main", "validate", str(SMOKE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first line (head closes after its lines)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == b"", err


def test_cli_validate_prints_id_counts_and_bytes():
    result = CliRunner().invoke(main, ["validate", str(SMOKE), "--set", "dataset.n_samples=6"])
    assert result.exit_code == 0, result.output
    rec = load_recipe(SMOKE, ["dataset.n_samples=6"])
    assert f"recipe id: {recipe_id(rec)}" in result.output
    assert "samples: 6" in result.output and "shards: 3" in result.output
    assert "estimated output:" in result.output
    # the noise banks are counted: 4x32^3 + 8x64^3 + 4x32^3 + 64x32^2 float32 = 9.25 MiB on top
    assert "banks/cracks       float32 (4, 32, 32, 32)" in result.output
    assert "banks/perlin_lo_2d float32 (64, 32, 32)" in result.output
    arrays = sum(float(line.split()[-2]) for line in result.output.splitlines()
                 if line.startswith("  ") and line.split()[0] in ("phantom", "noisy", "recon", "sinogram")
                 and line.split()[-1] == "MiB")
    total = float(result.output.split("estimated output: ")[1].split()[0])
    assert abs(total - (arrays + 1.5 + 9.25)) < 0.1  # + labels (1.5 MiB)


# ------------------------------------------------------------------------------- init (templates)
def test_every_ready_recipe_is_a_template_and_every_field_is_documented():
    from simaq_factory.recipe.model import Recipe
    from simaq_factory.recipe.schema import field_docs
    from simaq_factory.recipe.template import TEMPLATES

    assert set(TEMPLATES) == {p.stem for p in (REPO / "recipes").glob("*.yaml")} | {"reference"}
    docs = field_docs(Recipe)
    assert len(docs) > 130
    assert [path for path, doc, _ in docs if not doc.strip()] == []


@pytest.mark.parametrize("name", ["reference", "smoke", "paper-train", "extended"])
def test_annotated_recipe_lists_every_field_and_resolves_to_the_template(name):
    from simaq_factory.recipe.template import annotated_recipe, template_text

    text = annotated_recipe(name)
    expected = recipe_to_json(resolve(yaml.safe_load(template_text(name)) or {}))
    # every field is written out, with exactly the template's resolved value (execution included)
    assert yaml.safe_load(text) == json.loads(json.dumps(expected))
    assert resolve(yaml.safe_load(text)) == resolve(yaml.safe_load(template_text(name)) or {})
    # each field sits under a comment that says what it is and what it accepts
    lines = text.splitlines()
    for i, line in enumerate(lines):
        body = line.split("#", 1)[0].rstrip()
        if body and not body.endswith(":"):  # a leaf "key: value"
            assert lines[i - 1].lstrip().startswith("# "), line
    assert "tilt_span_deg: {low: 90.0, high: 110.0}" in text
    if name == "smoke":
        assert "shape: [64, 64, 64]  # default: [512, 512, 512]" in text
        assert "(integer >= 1)" in text and "(one of fbp, sirt, cgls)" in text


def test_cli_init_writes_checks_and_refuses(tmp_path):
    dest = tmp_path / "mine.yaml"
    ok = CliRunner().invoke(main, ["init", str(dest), "--template", "smoke"])
    assert ok.exit_code == 0, ok.output
    assert recipe_id(load_recipe(dest)) == recipe_id(load_recipe(SMOKE))
    assert list(tmp_path.iterdir()) == [dest]  # no temporary left behind

    dest.write_text("seed: 1\n")
    cases = [
        (["init", str(dest)], "exists; pass --force"),
        (["init", str(tmp_path / "x.yaml"), "--template", "nope"], "--template: unknown template 'nope'"),
        (["init", str(tmp_path / "missing" / "x.yaml")], "does not exist"),
        (["init", str(tmp_path)], "is a directory"),
    ]
    for args, needle in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, result.output)
    assert dest.read_text() == "seed: 1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]

    forced = CliRunner().invoke(main, ["init", str(dest), "--force"])
    assert forced.exit_code == 0 and recipe_id(load_recipe(dest)) == recipe_id(resolve({}))
    stdout = CliRunner().invoke(main, ["init", "-", "--template", "demo-cpu"])
    assert stdout.exit_code == 0
    assert resolve(yaml.safe_load(stdout.output)) == load_recipe(REPO / "recipes" / "demo-cpu.yaml")


def test_cli_module_imports_no_torch():
    """`simaq-factory --help`, errors and every spawned worker import the CLI: keep it light."""
    import subprocess
    import sys

    code = "import sys, simaq_factory.cli.main; print(sorted(m for m in ('torch', 'dask', 'zarr') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_empty_recipe_is_the_reference_with_a_warning(tmp_path, caplog):
    from simaq_factory.recipe.io import read_yaml

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with caplog.at_level("WARNING", logger="simaq_factory.recipe.io"):
        assert resolve(read_yaml(empty)) == resolve({})
        read_yaml(SMOKE)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "sets no field" in warned[0] and str(empty) in warned[0]


def test_a_normal_without_std_is_its_mean_and_min_above_max_is_refused():
    # `{mean: m}` is the constant m (std defaults to 0), not a random draw
    d = Dist.parse({"mean": 5}, "x")
    assert d.std == 0.0 and d.support() == (5.0, 5.0) and d.center == 5.0
    assert np.all(d.sample(np.random.default_rng(0), size=200) == 5.0)
    assert Dist.parse({"mean": 5}, "x").to_json() == {"mean": 5.0, "std": 0.0}
    # a clipped normal whose min lies above its max is an error naming the field, not clip() → max
    with pytest.raises(RecipeError) as err:
        Dist.parse({"mean": 100, "std": 5, "min": 120, "max": 80}, "acquisition.tilt_span_deg")
    assert err.value.path == "acquisition.tilt_span_deg" and "min must be <= max" in str(err.value)
    with pytest.raises(RecipeError) as err:
        resolve({"acquisition": {"tilt_span_deg": {"mean": 100, "std": 5, "min": 120, "max": 80}}})
    assert err.value.path == "acquisition.tilt_span_deg", str(err.value)
    Dist.parse({"mean": 100, "std": 5, "min": 80, "max": 80}, "x")  # min == max is allowed


def test_negative_zero_is_the_same_recipe_and_override_parse_errors_say_why():
    assert recipe_id(load_recipe(SMOKE, ["acquisition.jitter_deg=-0.0"])) == recipe_id(
        load_recipe(SMOKE, ["acquisition.jitter_deg=0"]))
    with pytest.raises(RecipeError, match=r"cannot parse override value .* \(duplicate key 'n_samples'"):
        load_recipe(SMOKE, ["dataset={n_samples: 2, n_samples: 3}"])


@pytest.mark.parametrize("override", ["artifacts.fiducials.count=1e6", "phantom.layout.max_iter=1e9",
                                      "phantom.vacuole.count=1000", "dataset.n_samples=1e23"])
def test_counts_and_budgets_that_could_only_hang_a_build_are_refused(override):
    # each validated, then the build ran (or listed shards) without end and without a word
    key = override.split("=")[0]
    with pytest.raises(RecipeError, match=rf"^{key}: must be <= "):
        load_recipe(SMOKE, [override])


def test_a_whole_float_for_a_choice_is_the_declared_integer_and_the_same_recipe():
    """``axes: 3.0`` validated as 3.0, then every shard failed (range(3.0)); ``1.0`` and ``1`` were
    two recipe ids."""
    three = load_recipe(SMOKE, ["acquisition.axes=3.0"])
    assert three.acquisition.axes == 3 and type(three.acquisition.axes) is int
    assert recipe_id(load_recipe(SMOKE, ["acquisition.axes=1.0"])) == recipe_id(load_recipe(SMOKE, ["acquisition.axes=1"]))
    with pytest.raises(RecipeError, match=r"^acquisition.axes: expected one of .*, got 2.5$"):
        load_recipe(SMOKE, ["acquisition.axes=2.5"])


def test_null_sections_empty_overrides_and_nulls_are_named_as_written(tmp_path):
    """A section left null (its lines commented out) or ``--set KEY=`` with an unset variable is
    refused, not the 4 × 512³ reference; YAML's null is shown as null; a bound as its integer; a
    second YAML document says what was expected."""
    with pytest.raises(RecipeError, match=r"^dataset: expected a mapping, got null: leave the section out"):
        resolve({"dataset": None})
    with pytest.raises(RecipeError, match=r"^dataset.n_samples: --set 'dataset.n_samples=' gives no value"):
        load_recipe(SMOKE, ["dataset.n_samples="])
    with pytest.raises(RecipeError, match=r"^phantom.cell.radius: expected a number, got null$"):
        resolve({"phantom": {"cell": {"radius": None}}})
    with pytest.raises(RecipeError, match=r"^null: unknown key"):
        resolve({None: 1})
    with pytest.raises(RecipeError, match=r"^seed: must be < 9223372036854775808, got "):
        resolve({"seed": 2**70})
    with pytest.raises(RecipeError, match=r"^artifacts.blur.kernel_size: must be odd"):
        resolve({"artifacts": {"blur": {"kernel_size": 4}}})
    with pytest.raises(RecipeError, match=r"^artifacts.blur.kernel_size: blur.kernel_size and blur.nominal_taps exclude"):
        resolve({"artifacts": {"blur": {"kernel_size": 5, "nominal_taps": 7}}})  # not the subject alone
    with pytest.raises(RecipeError, match=r"^phantom.vacuole.radius_min: radius_min \(0.5\) must be <= "):
        resolve({"phantom": {"vacuole": {"radius_min": 0.5, "radius_max": 0.2}}})
    with pytest.raises(RecipeError, match=r"^execution.device: unknown device 'cuda:٣' \(expected auto"):
        resolve({"execution": {"device": "cuda:٣"}})  # a non-ASCII digit: torch would refuse it later
    with pytest.raises(RecipeError, match=r"^artifacts.banks.perlin_hi_3d.edge: edge=30 must be a multiple"):
        resolve({"artifacts": {"banks": {"perlin_hi_3d": {"edge": 30}}}})
    two = tmp_path / "two.yaml"
    two.write_text("seed: 1\n---\nseed: 2\n")
    with pytest.raises(RecipeError, match="expected a single document in the stream, but found another document"):
        load_recipe(two)
