"""The recipe "adding an engine is its backend module + its table row + its test", shown at test time.

A two-file engine made up here (a ".lin" header naming the input size and a ".linw" weight matrix beside it, the
way OpenVINO keeps an .xml and a .bin) is registered through the public functions only: its row with
`register_engine`, its backend with `register_backend`. No module of tumor-edge is edited, and classify, the
Classifier, bench and env all see it: classify and bench run it, env reports its extra and package, and a second
engine whose package is not installed is skipped by bench and named with its extra by classify and env.
The backend is real arithmetic (the quadrant model of tests/runtime/models.py as a matrix product), so the labels
it gives are the ones the quadrant images were drawn to have.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.runtime.models import CLASSES, SIZE, quadrant_metadata, quadrant_weights, save_quadrant
from tumor_edge.contracts.bundle import describe_file
from tumor_edge.contracts.formats import Engine, register_engine, unregister_engine
from tumor_edge.errors import MissingExtraError
from tumor_edge.runtime.backends import Backend, BackendOptions, register_backend, unregister_backend

LIN = Engine("linear", (".lin", ".linw"), "tests.runtime.test_engine_registry", label="Linear",
             packages=("numpy",))
# The same kind of files under another suffix, whose engine needs a package no install has.
ABSENT = Engine("absent", (".absent",), "tests.runtime.test_engine_registry", label="Absent", extra="absentx",
                module="tumor_edge_no_such_engine_module", packages=("tumor-edge-no-such-distribution",))


class LinearBackend:
    """A .lin header (JSON: the input size) and its .linw weights: softmax(flatten(x) @ W), float32."""

    name = "linear"

    def __init__(self, path: Path, options: BackendOptions, sha256: str | None = None, source_check=None,
                 files=None):
        """`files`: the header's and the weights' bytes as the open stage read and checked them (None: a lone
        file, read here)."""
        if source_check is not None:
            source_check()
        self.path = self.loaded_path = Path(path)
        weights = self.path.with_suffix(".linw").name
        header = files.data if files is not None else self.path.read_bytes()
        data = files.members[weights] if files is not None else self.path.with_name(weights).read_bytes()
        header = json.loads(header)
        self.weights = np.load(io.BytesIO(data))
        self.input_shape = [None, header["size"], header["size"], 3]
        self.output_names = ["probs"]
        self.providers: list[str] = []
        self.missing_providers: list[str] = []

    def input_hw(self) -> tuple[int | None, int | None]:
        return self.input_shape[1], self.input_shape[2]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        logits = batch.reshape(len(batch), -1).astype(np.float32) @ self.weights
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return [(e / e.sum(axis=1, keepdims=True)).astype(np.float32)]

    def metadata_props(self) -> dict[str, str]:
        return {}


BACKEND = LinearBackend  # what the registry would import from this module by the rows' `backend`


@pytest.fixture
def engines():
    """The two engines, registered through the public functions for this test only."""
    for row in (LIN, ABSENT):
        register_engine(row)
        register_backend(row.name, LinearBackend)
    yield
    for row in (LIN, ABSENT):
        unregister_backend(row.name)
        unregister_engine(row.name)


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
    from tumor_edge.runtime.backends import backend_factory, engine_of

    assert engine_of(tmp_path / "m.lin") == "linear" and backend_factory("linear") is LinearBackend
    with pytest.raises(MissingExtraError, match=r"needs Absent: pip install 'tumor-edge\[absentx\]'"):
        engine_of(tmp_path / "m.absent")


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
    from tumor_edge.bench.harness import BenchConfig, run_bench
    from tumor_edge.bench.timing import RunPlan

    record = run_bench(BenchConfig(model=lin_bundle, threads=[1], batches=[1], plan=RunPlan(0, 2, 0.0),
                                   image_count=2, keras=False, cold_start=False, ceiling=False, show_progress=False))
    rows = {r["format"]: r for r in record["results"]}
    assert set(rows) == {"lin-fp32"} and rows["lin-fp32"]["file"] == "model_fp32.lin"
    assert rows["lin-fp32"]["p50_ms"] > 0
    skipped = {s["format"]: s["reason"] for s in record.get("skipped", [])}
    assert "tumor_edge_no_such_engine_module is not installed (pip install 'tumor-edge[absentx]')" in \
        skipped["absent-fp32"]


def test_env_reports_the_new_engines(engines):
    from importlib import metadata

    from tumor_edge.envcmd.extras import extra_for, extras_present
    from tumor_edge.envcmd.report import environment, format_text
    from tumor_edge.machine import machine_summary

    assert extras_present()["absentx"] == {"tumor_edge_no_such_engine_module": False}
    assert extra_for("tumor_edge_no_such_engine_module") == "absentx"
    env = environment()
    assert env["machine"]["packages"]["linear"] == metadata.version("numpy")
    assert env["machine"]["packages"]["absent"] is None
    text = format_text(env)
    assert "extra absentx   missing tumor_edge_no_such_engine_module (pip install 'tumor-edge[absentx]')" in text
    assert f"Linear {metadata.version('numpy')}" in machine_summary(env["machine"])


def test_registration_ends_with_the_test(tmp_path):
    """What the fixture registered is gone again: the tables hold only the shipped engines."""
    from tumor_edge.contracts.formats import ENGINES, engine_for_suffix
    from tumor_edge.envcmd.extras import all_extras

    assert "linear" not in ENGINES and engine_for_suffix(".lin") is None and "absentx" not in all_extras()


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
