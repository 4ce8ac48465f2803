"""What a benchmark times comes from the bundle contract and the format table: keys are the table's, a new
row is a new benchmark row with no bench change, optimised twins are not formats, the Keras reference is
found through the run-folder contract."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.runtime.models import optimized_model_name
from tumor_edge.bench.harness import BenchConfig, RunPlan, run_bench
from tumor_edge.bench.targets import resolve_subject
from tumor_edge.contracts import formats
from tumor_edge.contracts.bundle import (
    BundleMetadata,
    describe_file,
    is_optimized_name,
)
from tumor_edge.contracts.formats import BY_KEY, ModelFormat
from tumor_edge.contracts.run_folder import RunFolder
from tumor_edge.errors import ModelError


def _copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _add_file(bundle: Path, name: str, from_key: str, **extra) -> None:
    shutil.copyfile(bundle / BY_KEY[from_key].file, bundle / name)
    meta = BundleMetadata.read(bundle)
    meta.models[name] = describe_file(bundle / name, BY_KEY[from_key].format, BY_KEY[from_key].precision, **extra)
    meta.write(bundle)


def test_targets_are_keyed_by_the_format_table(tiny_onnx):
    subject = resolve_subject(tiny_onnx, keras=False)
    meta = BundleMetadata.read(tiny_onnx)
    plain = [name for name in meta.models if not is_optimized_name(name)]  # today's export may add twins
    assert {t.key for t in subject.targets} == {formats.format_of(name).key for name in plain}
    assert {t.key for t in subject.targets} == {"onnx-fp32", "onnx-int8"}
    assert all(t.engine == "onnxruntime" for t in subject.targets)
    # One file of a bundle: only that file, with its table key.
    one = resolve_subject(tiny_onnx / BY_KEY["onnx-int8"].file, keras=False)
    assert [(t.key, t.precision) for t in one.targets] == [("onnx-int8", "int8")]


def test_a_bundle_listing_an_optimised_twin_is_refused(tiny_onnx, tmp_path):
    bundle = _copy_bundle(tiny_onnx, tmp_path / "bundle")
    twin = optimized_model_name(BY_KEY["onnx-fp32"].file)
    _add_file(bundle, twin, "onnx-fp32", ort_optimized_from=BY_KEY["onnx-fp32"].file)
    with pytest.raises(ModelError, match="re-export"):
        resolve_subject(bundle, keras=False)


def test_a_new_row_in_the_format_table_is_a_new_benchmark_row(tiny_onnx, tmp_path, monkeypatch):
    """Adding a format is a row in the table (plus its converter): bench needs no change to time it."""
    row = ModelFormat("onnx-int8w", "onnx", "int8", "model_int8w.onnx", "onnxruntime")
    monkeypatch.setattr(formats, "FORMATS", (*formats.FORMATS, row))
    bundle = _copy_bundle(tiny_onnx, tmp_path / "bundle")
    _add_file(bundle, row.file, "onnx-int8")
    subject = resolve_subject(bundle, keras=False)
    assert "onnx-int8w" in {t.key for t in subject.targets}
    record = run_bench(BenchConfig(model=bundle, threads=[1], batches=[1], plan=RunPlan(0, 2, 0.0), image_count=2,
                                   keras=False, cold_start=False, ceiling=False, show_progress=False))
    rows = {r["format"]: r for r in record["results"]}
    assert set(rows) == {"onnx-fp32", "onnx-int8", "onnx-int8w"}
    assert rows["onnx-int8w"]["file"] == row.file and rows["onnx-int8w"]["ceiling_precision"] == "int8"


def test_keras_reference_comes_from_the_run_folder(tiny_onnx, tmp_path):
    run = RunFolder(Path(BundleMetadata.read(tiny_onnx).provenance["run_dir"]))
    subject = resolve_subject(tiny_onnx)  # from the bundle's provenance
    assert subject.targets[0].key == "keras" and subject.targets[0].path == run.model
    assert subject.run_dir == run.path
    named = resolve_subject(tiny_onnx, run=run.model)  # the run's model file named directly
    assert named.targets[0].path == run.model
    with pytest.raises(ModelError, match="no model.keras here"):
        resolve_subject(tiny_onnx, run=tmp_path)
