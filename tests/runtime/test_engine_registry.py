"""The recipe for a new engine (README, "Where to add things"), followed by this file alone.

A two-file engine made up here (a ".lin" header naming the input size and a ".linw" weight matrix beside it, the
way OpenVINO keeps an .xml and a .bin), run by its own package (`linrt`, distribution `lin-runtime`, installed by
the test into a folder on sys.path) and installed by its own extra (`linear`). The recipe's files are:
- its rows in `tumor_edge/contracts/formats.py` (`LIN`, `LIN_ROW` below, put in the tables for each test),
- its backend module (this module: the rows' `backend` names it, and its `BACKEND` is `LinearBackend`),
- its extra in pyproject.toml (`RECIPE_EXTRA`, added to a parsed copy of the repository's pyproject),
- its test (this file).
No other module of tumor-edge changes, and classify, the Classifier, bench, verify, env, the extras table and
the engine versions that key the device's choice of file all see it; a second engine whose package is not
installed is skipped by bench and named with its extra by classify and env. The backend is real arithmetic (the
quadrant model of tests/runtime/models.py as a matrix product), so the labels it gives are the ones the quadrant
images were drawn to have.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.runtime.models import CLASSES, SIZE, quadrant_metadata, quadrant_weights, save_quadrant
from tumor_edge.contracts import formats
from tumor_edge.contracts.bundle import describe_file
from tumor_edge.contracts.formats import Engine, ModelFormat
from tumor_edge.errors import MissingExtraError
from tumor_edge.runtime.backends import Backend, BackendOptions

# ---- the rows (tumor_edge/contracts/formats.py) ----------------------------------------------------------------
LIN = Engine("linear", (".lin", ".linw"), "tests.runtime.test_engine_registry", label="Linear", extra="linear",
             module="linrt", packages=("lin-runtime",))
LIN_ROW = ModelFormat("lin-fp32", "lin", "fp32", "model_fp32.lin", "linear", default_rank=9)
# The same kind of files under another suffix, whose engine needs a package no install has.
ABSENT = Engine("absent", (".absent",), "tests.runtime.test_engine_registry", label="Absent", extra="absentx",
                module="tumor_edge_no_such_engine_module", packages=("tumor-edge-no-such-distribution",))

# ---- the extra (pyproject.toml, under [project.optional-dependencies]) ------------------------------------------
RECIPE_EXTRA = 'linear = ["lin-runtime>=0.7"]'

# ---- the engine's package, as pip would install it ---------------------------------------------------------------
LINRT = '''
import numpy as np


def probabilities(batch, weights):
    logits = batch.reshape(len(batch), -1).astype(np.float32) @ weights
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
'''


def install_linrt(site: Path) -> None:
    (site / "linrt").mkdir(parents=True)
    (site / "linrt" / "__init__.py").write_text(LINRT)
    info = site / "lin_runtime-0.7.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lin-runtime\nVersion: 0.7.0\n")
    (info / "top_level.txt").write_text("linrt\n")


# ---- the backend module (tumor_edge/runtime/backends/linear_backend.py) -----------------------------------------
class LinearBackend:
    """A .lin header (JSON: the input size) and its .linw weights: softmax(flatten(x) @ W), float32."""

    name = "linear"

    def __init__(self, path: Path, options: BackendOptions, files=None):
        """`files`: the header's and the weights' bytes as the open stage read and checked them (None: a lone
        file, read here)."""
        self.path = Path(path)
        weights = self.path.with_suffix(".linw").name
        header = files.data if files is not None else self.path.read_bytes()
        data = files.members[weights] if files is not None else self.path.with_name(weights).read_bytes()
        header = json.loads(header)
        self.weights = np.load(io.BytesIO(data))
        self.input_shape = [None, header["size"], header["size"], 3]
        self.output_names = ["probs"]
        self.providers: list[str] = []
        self.missing_providers: list[str] = []

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        import linrt

        return [linrt.probabilities(batch, self.weights)]

    def metadata_props(self) -> dict[str, str]:
        return {}


BACKEND = LinearBackend  # what the registry would import from this module by the rows' `backend`


# ---- its test ---------------------------------------------------------------------------------------------------

@pytest.fixture
def engines(tmp_path_factory, monkeypatch):
    """The rows in the tables and the engine's package installed, for this test only."""
    site = tmp_path_factory.mktemp("site")
    install_linrt(site)
    monkeypatch.syspath_prepend(str(site))
    for row in (LIN, ABSENT):
        monkeypatch.setitem(formats.ENGINES, row.name, row)
    monkeypatch.setattr(formats, "FORMATS", (*formats.FORMATS, LIN_ROW))
    yield
    sys.modules.pop("linrt", None)


def _write_model(folder: Path, name: str) -> Path:
    model = folder / name
    model.write_text(json.dumps({"size": SIZE}))
    with open(model.with_suffix(".linw"), "wb") as fh:
        np.save(fh, quadrant_weights(SIZE) * 20)  # sharper than the ONNX quadrant model: a clear winner
    return model


@pytest.fixture
def lin_bundle(tmp_path, engines) -> Path:
    """A bundle whose models are a .lin file (with its .linw) and an .absent file."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    metadata = quadrant_metadata()
    lin = _write_model(folder, "model_fp32.lin")
    absent = _write_model(folder, "model_fp32.absent")
    metadata.models = {lin.name: describe_file(lin, "lin", "fp32"), absent.name: describe_file(absent, "absent",
                                                                                              "fp32")}
    metadata.write(folder)
    return folder


def test_the_registry_knows_the_engine_by_its_row(engines, tmp_path):
    from tumor_edge.runtime.backends import backend_factory, engine_row

    assert engine_row(tmp_path / "m.lin").name == "linear" and backend_factory("linear") is LinearBackend
    with pytest.raises(MissingExtraError, match=r"needs Absent: pip install 'tumor-edge\[absentx\]'"):
        engine_row(tmp_path / "m.absent")


def test_classify_runs_the_new_engine(lin_bundle, tmp_path):
    from tumor_edge.cli import main
    from tumor_edge.runtime import Classifier

    images = [save_quadrant(tmp_path / f"q{q}.png", q) for q in range(4)]
    classifier = Classifier.from_bundle(lin_bundle, "model_fp32.lin")
    assert isinstance(classifier.backend, Backend) and classifier.backend.name == "linear"
    assert [classifier.predict(p).label for p in images] == CLASSES
    result = CliRunner().invoke(main, ["classify", *map(str, images), "-m", str(lin_bundle / "model_fp32.lin"),
                                       "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["label"] for r in rows] == CLASSES
    missing = CliRunner().invoke(main, ["classify", str(images[0]), "-m", str(lin_bundle / "model_fp32.absent")])
    assert missing.exit_code != 0 and "pip install 'tumor-edge[absentx]'" in missing.output
    assert "Traceback" not in missing.output


def test_a_missing_companion_file_is_one_line(lin_bundle):
    from tumor_edge.errors import ModelError
    from tumor_edge.runtime.backends import open_backend

    (lin_bundle / "model_fp32.linw").unlink()
    with pytest.raises(ModelError, match="needs model_fp32.linw beside this file"):
        open_backend(lin_bundle / "model_fp32.lin")


def test_bench_times_the_new_engine_and_skips_the_absent_one(lin_bundle):
    from tumor_edge.bench.harness import BenchConfig, RunPlan, run_bench

    record = run_bench(BenchConfig(model=lin_bundle, threads=[1], batches=[1], plan=RunPlan(0, 2, 0.0),
                                   image_count=2, keras=False, cold_start=False, ceiling=False, show_progress=False))
    rows = {r["format"]: r for r in record["results"]}
    assert set(rows) == {"lin-fp32"} and rows["lin-fp32"]["file"] == "model_fp32.lin"
    assert rows["lin-fp32"]["p50_ms"] > 0
    skipped = {s["format"]: s["reason"] for s in record.get("skipped", [])}
    assert "tumor_edge_no_such_engine_module is not installed (pip install 'tumor-edge[absentx]')" in \
        skipped["absent-fp32"]


def test_env_and_the_extras_table_report_the_new_engines(engines):
    from tumor_edge.envcmd.commands import environment, format_text
    from tumor_edge.envcmd.extras import extra_for, extras_present
    from tumor_edge.machine import machine_summary

    assert extras_present()["linear"] == {"linrt": True}
    assert extras_present()["absentx"] == {"tumor_edge_no_such_engine_module": False}
    assert extra_for("linrt") == "linear" and extra_for("tumor_edge_no_such_engine_module") == "absentx"
    env = environment()
    assert env["machine"]["packages"]["linear"] == "0.7.0" and env["machine"]["packages"]["absent"] is None
    text = format_text(env)
    assert "extra linear    present" in text
    assert "extra absentx   missing tumor_edge_no_such_engine_module (pip install 'tumor-edge[absentx]')" in text
    assert "Linear 0.7.0" in machine_summary(env["machine"])


def test_the_extra_is_declared_by_the_recipes_line_in_pyproject(engines):
    """The install test's rule (every extra the tables name is declared, by a distribution providing its
    modules) holds with the recipe's one line in pyproject.toml, and fails without it."""
    from tests.test_install import REPO, extras_not_declared, tomllib

    text = (REPO / "pyproject.toml").read_text()
    assert "extra linear is not in pyproject" in extras_not_declared(tomllib.loads(text))
    section = "[project.optional-dependencies]\n"
    with_recipe = tomllib.loads(text.replace(section, section + RECIPE_EXTRA + "\n"))
    assert extras_not_declared(with_recipe) == ["extra absentx is not in pyproject"]


def test_the_device_choice_key_and_the_format_lookups_follow_the_rows(engines):
    """The engines' versions key the device's choice of file, so installing another lin-runtime makes the
    choice be measured again; the format lookups (export's and bench's choices and help, the bundle's file list,
    the default-model order) are the table's rows as they are now."""
    assert formats.engine_versions()["linear"] == "0.7.0"
    assert formats.engine_versions()["absent"] == "absent"
    assert "lin" in formats.containers() and formats.by_key()["lin-fp32"] is LIN_ROW
    assert {"model_fp32.lin", "model_fp32.linw"} <= set(formats.bundle_model_files())
    assert formats.default_model_preference()[-1] == "model_fp32.lin"


def test_the_rows_end_with_the_test():
    """What the fixture put in is gone again: the tables hold only the shipped engines."""
    from tumor_edge.contracts.formats import ENGINES, engine_for_suffix
    from tumor_edge.envcmd.extras import all_extras

    assert "linear" not in ENGINES and engine_for_suffix(".lin") is None and "absentx" not in all_extras()
    assert "linear" not in formats.engine_versions() and "lin" not in formats.containers()


def test_the_entry_hashes_every_file_of_the_engine(lin_bundle):
    """The bundle schema and sha256 per file: a model entry of a two-file engine lists its companion with its own
    size and sha256 (describe_file adds the engine's companions), and metadata.json round-trips through the
    schema with the engine's format name."""
    from tumor_edge.contracts.bundle import BundleMetadata, sha256_file

    entry = BundleMetadata.read(lin_bundle).models["model_fp32.lin"]
    assert entry.format == "lin" and set(entry.files) == {"model_fp32.linw"}
    member = entry.files["model_fp32.linw"]
    assert member.sha256 == sha256_file(lin_bundle / "model_fp32.linw")
    assert member.size_bytes == (lin_bundle / "model_fp32.linw").stat().st_size


def test_a_changed_companion_file_is_refused(lin_bundle, tmp_path):
    """The .linw (OpenVINO's .bin) is checked like the model file: one changed byte and nothing runs."""
    from tumor_edge.cli import main
    from tumor_edge.errors import BundleIntegrityError
    from tumor_edge.runtime import Bundle, Classifier

    weights = lin_bundle / "model_fp32.linw"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=r"model_fp32\.linw: sha256"):
        Classifier.from_bundle(lin_bundle, "model_fp32.lin")
    with pytest.raises(BundleIntegrityError, match="model_fp32.linw"):
        Bundle.open(lin_bundle).check("model_fp32.lin")
    image = save_quadrant(tmp_path / "q0.png", 0)
    result = CliRunner().invoke(main, ["classify", str(image), "-m", str(lin_bundle / "model_fp32.lin")])
    assert result.exit_code != 0 and "model_fp32.linw" in result.output and "Traceback" not in result.output


def test_an_entry_that_does_not_list_the_companion_is_refused(lin_bundle):
    """A bundle whose entry omits the companion (so its bytes are unchecked) is refused before anything runs."""
    from tumor_edge.contracts.bundle import BundleMetadata
    from tumor_edge.errors import BundleIntegrityError
    from tumor_edge.runtime import Classifier

    metadata = BundleMetadata.read(lin_bundle)
    metadata.models["model_fp32.lin"].files.clear()
    metadata.write(lin_bundle)
    with pytest.raises(BundleIntegrityError, match=r"model_fp32\.linw.*not listed"):
        Classifier.from_bundle(lin_bundle, "model_fp32.lin")


def test_verify_reproduces_the_new_engine(lin_bundle, monkeypatch, tmp_path):
    """The verify path: export's reference record, then verify on the device reproduces the two-file engine's
    outputs (and names the file whose engine is missing as not checked here)."""
    from tumor_edge.export.reference import record_reference
    from tumor_edge.runtime import verify_bundle

    monkeypatch.setenv("TUMOR_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    record_reference(lin_bundle)
    report = verify_bundle(lin_bundle, choose=False)
    assert report.ok, report.problems
    assert report.files["model_fp32.lin"]["reproduced"]
    assert "model_fp32.absent" in report.not_checked
