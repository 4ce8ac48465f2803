"""A sealed bundle: only listed, hashed files are ever read, metadata.json cannot relabel a model, and a model's
output is shown as probabilities only when it is one.

Each test is an attack: an unlisted file beside the model, a reversed `classes` list, an external data file
replaced under an unchanged model, a raw output of 1.39e10 declared a probability.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from tests.runtime.models import (
    CLASSES,
    make_bundle,
    optimized_model_name,
    quadrant_image,
    quadrant_metadata,
    quadrant_model,
)
from tumor_edge.cli import main
from tumor_edge.contracts.bundle import METADATA_FILE, BundleMetadata, describe_file, sha256_file
from tumor_edge.errors import BundleIntegrityError, ModelError
from tumor_edge.runtime import Classifier
from tumor_edge.runtime.choice import CACHE_DIR_ENV

MODEL = "model_fp32.onnx"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """A cache and a state folder of the test's own (`classify` remembers the last bundle there)."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TUMOR_EDGE_MODEL", raising=False)


def _pixels() -> np.ndarray:
    return np.stack([quadrant_image(q, 32) for q in range(4)])


def _labels(clf: Classifier) -> list[str]:
    return [p.label for p in clf.predict_batch(list(_pixels()))]


def _rewrite_metadata(bundle, change) -> None:
    data = json.loads((bundle / METADATA_FILE).read_text())
    change(data)
    (bundle / METADATA_FILE).write_text(json.dumps(data))


# ------------------------------------------------------------------ 1. an unlisted file never replaces the model


def _always_pituitary(path, metadata: BundleMetadata | None = None):
    """The quadrant model with a bias that makes every answer 'pituitary'."""
    model = quadrant_model(metadata=metadata or quadrant_metadata())
    next(t for t in model.graph.initializer if t.name == "B").float_data[:] = [0.0, 0.0, 0.0, 100.0]
    onnx.save(model, path)
    return path


def test_an_unlisted_model_file_in_the_bundle_is_never_run(fresh_bundle):
    """A model file the metadata does not list, under the name an optimised copy would have: never loaded."""
    twin = _always_pituitary(fresh_bundle / optimized_model_name(MODEL))
    clf = Classifier.from_bundle(fresh_bundle)
    assert clf.model_path != twin
    assert _labels(clf) == CLASSES


def test_a_bundle_listing_an_optimised_copy_is_refused_in_one_line(fresh_bundle):
    """A bundle that lists an optimised copy made for one machine (`*.ort.onnx`, `ort_optimized_from`) is not run
    at all: it must be exported again."""
    twin = optimized_model_name(MODEL)
    _always_pituitary(fresh_bundle / twin)
    meta = BundleMetadata.read(fresh_bundle)
    entry = describe_file(fresh_bundle / twin, "onnx", "fp32")
    _rewrite_metadata(fresh_bundle, lambda d: d["models"].update(
        {twin: {**entry.to_dict(), "ort_optimized_from": MODEL}}))
    for call in (lambda: BundleMetadata.read(fresh_bundle), lambda: Classifier.from_bundle(fresh_bundle)):
        with pytest.raises(ModelError, match="re-export") as caught:
            call()
        assert "\n" not in str(caught.value) and twin in str(caught.value)
    assert meta.models[MODEL].sha256 == sha256_file(fresh_bundle / MODEL)


def test_metadata_symlinked_from_outside_the_bundle_is_refused(fresh_bundle, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text((fresh_bundle / METADATA_FILE).read_text())
    (fresh_bundle / METADATA_FILE).unlink()
    (fresh_bundle / METADATA_FILE).symlink_to(outside)
    with pytest.raises(ModelError, match="symbolic link"):
        Classifier.from_bundle(fresh_bundle)


def test_a_model_symlinked_from_outside_the_bundle_is_refused(fresh_bundle, tmp_path):
    outside = tmp_path / "outside.onnx"
    (fresh_bundle / MODEL).rename(outside)
    (fresh_bundle / MODEL).symlink_to(outside)
    with pytest.raises(BundleIntegrityError, match="outside the bundle"):
        Classifier.from_bundle(fresh_bundle)


# ------------------------------------------------------------------ 2. metadata.json is bound to the model file


@pytest.mark.parametrize(("field", "change"), [
    ("classes", lambda d: d.update(classes=list(reversed(d["classes"])))),
    ("classes", lambda d: d.update(classes=["a", "b", "c", "d"])),
    ("preprocessing", lambda d: d["preprocessing"].update(scaling="symmetric")),
    ("preprocessing", lambda d: d["preprocessing"].update(resize="nearest")),
    ("output", lambda d: (d.update(output={"type": "logits"}), d["outputs"]["scores"].update(type="logits"))),
])
def test_metadata_that_disagrees_with_the_model_file_is_refused(fresh_bundle, field, change):
    """Finding (high): reversing `classes` in metadata.json relabelled every scan; the model file carries the
    true order in its own metadata_props, and they are compared before use."""
    assert Classifier.from_bundle(fresh_bundle).classes == CLASSES
    _rewrite_metadata(fresh_bundle, change)
    with pytest.raises(ModelError) as caught:
        Classifier.from_bundle(fresh_bundle)
    message = str(caught.value)
    assert "\n" not in message and MODEL in message and field in message and METADATA_FILE in message


def test_extra_output_roles_are_bound_when_the_model_file_declares_them(tmp_path):
    meta = quadrant_metadata()
    from tumor_edge.contracts.bundle import OutputSpec

    meta.extra_outputs = {"heatmap": OutputSpec("heatmap", 1, "cam")}
    model = quadrant_model(metadata=meta)
    model.graph.node.append(helper.make_node("Identity", ["image"], ["cam"]))
    model.graph.output.append(helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["N", 32, 32, 3]))
    bundle = tmp_path / "b"
    bundle.mkdir()
    onnx.save(model, bundle / MODEL)
    meta.models = {MODEL: describe_file(bundle / MODEL, "onnx", "fp32")}
    meta.write(bundle)
    assert Classifier.from_bundle(bundle).predict(_pixels()[0]).outputs["heatmap"].shape == (32, 32, 3)
    _rewrite_metadata(bundle, lambda d: d["outputs"].update(heatmap={"index": 1, "type": "features"}))
    with pytest.raises(ModelError, match="outputs"):
        Classifier.from_bundle(bundle)


def test_duplicate_keys_in_metadata_are_refused(fresh_bundle):
    """Finding: a second "classes" key was accepted silently (JSON keeps the last)."""
    text = (fresh_bundle / METADATA_FILE).read_text()
    forged = text.replace('"classes": [', '"classes": ["pituitary", "notumor", "meningioma", "glioma"],\n'
                                          '  "classes": [', 1)
    (fresh_bundle / METADATA_FILE).write_text(forged)
    with pytest.raises(ModelError, match="duplicate key 'classes'"):
        BundleMetadata.read(fresh_bundle)


def test_verify_fails_a_relabelled_bundle(fresh_bundle):
    """Finding (high): `verify` said "all checks passed" for a bundle whose classes were reversed."""
    from tumor_edge.export.reference import record_reference

    record_reference(fresh_bundle)
    runner = CliRunner()
    assert runner.invoke(main, ["verify", str(fresh_bundle)]).exit_code == 0
    _rewrite_metadata(fresh_bundle, lambda d: d.update(classes=list(reversed(d["classes"]))))
    result = runner.invoke(main, ["verify", str(fresh_bundle)])
    assert result.exit_code != 0
    assert "Traceback" not in result.output and "all checks passed" not in result.output
    assert "classes" in result.output and MODEL in result.output


def test_a_lone_model_file_is_its_own_metadata(tmp_path):
    lone = tmp_path / "lone.onnx"
    onnx.save(quadrant_model(metadata=quadrant_metadata()), lone)
    assert _labels(Classifier.from_bundle(lone)) == CLASSES


# ------------------------------------------------------------------ 4. probabilities are probabilities


def _scores_model(kind: str) -> onnx.ModelProto:
    """The quadrant model whose output is declared 'probabilities' but is: raw logits (values ~10),
    a huge raw value (1.39e10), or softmax halved (in [0, 1] but summing to 0.5)."""
    model = quadrant_model(metadata=quadrant_metadata(), output="logits" if kind != "halved" else "probabilities")
    graph = model.graph
    if kind == "huge":
        next(t for t in graph.initializer if t.name == "B").float_data[:] = [1.39e10, 0.0, 0.0, 0.0]
    if kind == "halved":
        graph.output[0].name = "halved"
        graph.node.append(helper.make_node("Mul", ["probs", "half"], ["halved"]))
        graph.initializer.append(helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]))
    return model


@pytest.mark.parametrize("kind", ["logits", "huge", "halved"])
def test_outputs_that_are_not_probabilities_are_never_shown_as_such(tmp_path, kind):
    """Finding (low): a raw output of 1.39e10 was printed as a probability."""
    bundle = make_bundle(tmp_path / "b")
    onnx.save(_scores_model(kind), bundle / MODEL)
    meta = BundleMetadata.read(bundle)
    meta.models[MODEL] = describe_file(bundle / MODEL, "onnx", "fp32")
    meta.write(bundle)
    clf = Classifier.from_bundle(bundle)
    with pytest.raises(ModelError) as caught:
        clf.predict(_pixels()[0])
    message = str(caught.value)
    assert "\n" not in message and MODEL in message and "probabilit" in message


def test_declared_logits_get_a_softmax(tmp_path):
    bundle = make_bundle(tmp_path / "b", output="logits")
    probs = Classifier.from_bundle(bundle).infer_outputs(_pixels())["scores"]
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6) and list(probs.argmax(axis=1)) == [0, 1, 2, 3]


def test_loading_writes_nothing_into_the_bundle(fresh_bundle):
    before = sorted(p.name for p in fresh_bundle.iterdir())
    clf = Classifier.from_bundle(fresh_bundle)
    assert _labels(clf) == CLASSES and clf.model_path == fresh_bundle / MODEL
    assert sorted(p.name for p in fresh_bundle.iterdir()) == before


# ------------------------------------------------------------------ 3. a model's external data is listed and hashed

DATA = "weights.data"


def _external_model(weights: np.ndarray | None = None, in_attribute: bool = False) -> onnx.ModelProto:
    """The quadrant model with its weights W as raw data (so `onnx` can move them to an external file), or W as
    a Constant node's attribute (external data may hide in attributes too)."""
    model = quadrant_model(metadata=quadrant_metadata())
    graph = model.graph
    for i, tensor in enumerate(graph.initializer):
        value = onnx.numpy_helper.to_array(tensor)
        if tensor.name == "W" and weights is not None:
            value = weights.astype(np.float32)
        graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(value, tensor.name))
    if in_attribute:
        w = next(t for t in graph.initializer if t.name == "W")
        graph.node.insert(0, helper.make_node("Constant", [], ["W"], value=w))
        graph.initializer.remove(w)
    return model


def _pituitary_weights() -> np.ndarray:
    from tests.runtime.models import quadrant_weights

    weights = quadrant_weights(32)
    weights[:, 3] += 1.0  # every pixel votes pituitary
    return weights


def _save_external(model: onnx.ModelProto, path, convert_attribute: bool = False) -> None:
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=DATA,
                    size_threshold=1024, convert_attribute=convert_attribute)


def _external_bundle(folder, listed: bool = True):
    folder.mkdir(parents=True)
    meta = quadrant_metadata()
    _save_external(_external_model(), folder / MODEL)
    assert (folder / DATA).stat().st_size == 32 * 32 * 3 * 4 * 4  # W, and nothing else, lives outside
    meta.models = {MODEL: describe_file(folder / MODEL, "onnx", "fp32", files=(DATA,) if listed else ())}
    meta.write(folder)
    return folder


def _replace_data(bundle, weights: np.ndarray) -> None:
    (bundle / DATA).write_bytes(weights.astype(np.float32).tobytes())


def test_external_data_the_metadata_does_not_list_is_refused(tmp_path):
    """Finding (low): a model's external-data file was never hashed; replaced, it changed every answer."""
    bundle = _external_bundle(tmp_path / "b", listed=False)
    _replace_data(bundle, _pituitary_weights())
    with pytest.raises(BundleIntegrityError) as caught:
        Classifier.from_bundle(bundle)
    message = str(caught.value)
    assert "\n" not in message and DATA in message and MODEL in message and "not listed" in message


def test_listed_external_data_is_hashed(tmp_path):
    bundle = _external_bundle(tmp_path / "b")
    assert list(json.loads((bundle / METADATA_FILE).read_text())["models"][MODEL]["files"]) == [DATA]
    assert _labels(Classifier.from_bundle(bundle)) == CLASSES
    _replace_data(bundle, _pituitary_weights())  # same size, other weights
    with pytest.raises(BundleIntegrityError, match=f"{DATA}: sha256 .* differs"):
        Classifier.from_bundle(bundle)
    from tumor_edge.contracts.bundle import read_model_files

    with pytest.raises(BundleIntegrityError, match=DATA):  # what `verify`'s integrity line runs
        read_model_files(bundle, MODEL, BundleMetadata.read(bundle))


def test_external_data_linked_from_outside_the_bundle_is_refused(tmp_path):
    bundle = _external_bundle(tmp_path / "b")
    outside = tmp_path / "outside.data"
    (bundle / DATA).rename(outside)
    (bundle / DATA).symlink_to(outside)
    with pytest.raises(BundleIntegrityError, match="outside the bundle"):
        Classifier.from_bundle(bundle)


def test_new_external_data_runs_its_new_weights(tmp_path):
    """New weights in the data file under an unchanged model file (a legitimate update, listed again): the new
    weights run, from the bytes read, never an earlier load's."""
    bundle = _external_bundle(tmp_path / "b")
    assert _labels(Classifier.from_bundle(bundle)) == CLASSES
    _replace_data(bundle, _pituitary_weights())
    meta = BundleMetadata.read(bundle)
    meta.models[MODEL] = describe_file(bundle / MODEL, "onnx", "fp32", files=(DATA,))
    meta.write(bundle)
    assert _labels(Classifier.from_bundle(bundle)) == ["pituitary"] * 4


def test_external_data_in_a_node_attribute_is_found(tmp_path):
    from tumor_edge.runtime.backends.onnxruntime_backend import external_data_locations

    bundle = tmp_path / "b"
    bundle.mkdir()
    _save_external(_external_model(in_attribute=True), bundle / MODEL, convert_attribute=True)
    assert external_data_locations(bundle / MODEL) == [DATA]
    meta = quadrant_metadata()
    meta.models = {MODEL: describe_file(bundle / MODEL, "onnx", "fp32")}
    meta.write(bundle)
    with pytest.raises(BundleIntegrityError, match="not listed"):
        Classifier.from_bundle(bundle)


def test_a_damaged_model_is_a_one_line_error_not_a_walk_into_the_void(tmp_path):
    from tumor_edge.runtime.backends.onnxruntime_backend import external_data_locations

    path = tmp_path / "m.onnx"
    _save_external(_external_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        external_data_locations(path)
    path.write_bytes(b"")
    assert external_data_locations(path) == []


def test_a_lone_model_with_external_data_runs(tmp_path):
    lone = tmp_path / "lone.onnx"
    _save_external(_external_model(), lone)
    assert _labels(Classifier.from_bundle(lone)) == CLASSES


def test_export_records_every_external_data_file(tmp_path):
    from tumor_edge.export.context import ExportedFile
    from tumor_edge.export.exporter import model_entries

    _save_external(_external_model(), tmp_path / MODEL)
    onnx.save(quadrant_model(metadata=quadrant_metadata()), tmp_path / "model_fp16.onnx")
    rows = [ExportedFile("onnx-fp32", MODEL, "onnx", "fp32", "onnxruntime"),
            ExportedFile("onnx-fp16", "model_fp16.onnx", "onnx", "fp16", "onnxruntime")]
    entries = model_entries(tmp_path, rows)
    assert list(entries[MODEL].files) == [DATA]
    assert entries[MODEL].files[DATA].sha256 == sha256_file(tmp_path / DATA)
    assert entries[MODEL].to_dict()["files"][DATA]["size_bytes"] == (tmp_path / DATA).stat().st_size
    assert "files" not in entries["model_fp16.onnx"].to_dict()  # none: the entry reads as it always did


def test_hostile_nesting_is_a_one_line_error(tmp_path):
    """Subgraphs nest (an If inside an If's branch); a file nesting deeper than any model is refused, not walked
    until Python's stack or the machine's memory gives out."""
    from tumor_edge.runtime.backends.onnxruntime_backend import MAX_DEPTH, external_data_locations

    def _field(number: int, payload: bytes) -> bytes:  # a length-delimited protobuf field (lengths < 128 here)
        length = len(payload)
        varint = bytes([length]) if length < 0x80 else bytes([length & 0x7F | 0x80, length >> 7])
        return bytes([number << 3 | 2]) + varint + payload

    graph = b""
    for _ in range(MAX_DEPTH):  # graph -> node (1) -> attribute (5) -> g (6) -> graph ...
        graph = _field(1, _field(5, _field(6, graph)))
    path = tmp_path / "deep.onnx"
    path.write_bytes(_field(7, graph))
    with pytest.raises(ModelError, match="nested too deeply"):
        external_data_locations(path)
    entry = _field(13, _field(1, b"location") + _field(2, b"w.bin"))  # a tensor (5) naming external data
    path.write_bytes(_field(7, _field(1, _field(5, _field(6, _field(5, entry))))))
    assert external_data_locations(path) == ["w.bin"]


def test_cli_runs_the_listed_model_and_refuses_relabelled_metadata(fresh_bundle, tmp_path):
    """Through the commands users run: `verify` reproduces the export's outputs with an unlisted model file
    present, and `classify` refuses relabelled metadata in one line."""
    from tests.runtime.models import save_quadrant
    from tumor_edge.export.reference import record_reference

    record_reference(fresh_bundle)
    _always_pituitary(fresh_bundle / optimized_model_name(MODEL))
    runner = CliRunner()
    result = runner.invoke(main, ["verify", str(fresh_bundle)])
    assert result.exit_code == 0 and f"reproduce: ok  {MODEL}" in result.stdout, result.output
    scan = save_quadrant(tmp_path / "glioma.png", 0)
    result = runner.invoke(main, ["classify", "--model", str(fresh_bundle), str(scan)])
    assert result.exit_code == 0 and "glioma" in result.stdout.splitlines()[1], result.output
    _rewrite_metadata(fresh_bundle, lambda d: d.update(classes=list(reversed(d["classes"]))))
    result = runner.invoke(main, ["classify", "--model", str(fresh_bundle), str(scan)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and "Traceback" not in result.output and "pituitary" not in result.stdout
    assert len(errors) == 1 and "classes" in errors[0] and MODEL in errors[0]
