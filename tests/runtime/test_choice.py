"""The device picks the file it runs by measurement: candidates, the recorded choice, its key, the override."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil

import onnx
import pytest
from onnx import helper

from tests.runtime.models import make_bundle, quadrant_model, save_quadrant
from tumor_edge.contracts.bundle import BundleMetadata, describe_file
from tumor_edge.runtime.backends import BackendOptions
from tumor_edge.runtime.choice import candidates, measure_choice, pick_model, record_path, recorded_choice

SLOW_NODES = 400  # a chain of elementwise nodes on the flattened image: ~50x the quadrant model's time anywhere


def slow_quadrant_model(metadata: BundleMetadata) -> onnx.ModelProto:
    """The quadrant model (same outputs) plus a long chain of Tanh nodes whose result is multiplied by zero and
    added to the logits: the same answers, many times the work. The chain depends on the input, so no
    optimiser folds it away."""
    model = quadrant_model(metadata=metadata)
    graph = model.graph
    previous = "flat"
    for i in range(SLOW_NODES):
        graph.node.append(helper.make_node("Tanh", [previous], [f"t{i}"]))
        previous = f"t{i}"
    graph.node.append(helper.make_node("ReduceSum", [previous], ["chain_sum"], keepdims=1))
    graph.initializer.append(helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0]))
    graph.node.append(helper.make_node("Mul", ["chain_sum", "zero"], ["nothing"]))
    add = next(n for n in graph.node if n.op_type == "Add")
    add.output[0] = "logits_plain"
    graph.node.append(helper.make_node("Add", ["logits_plain", "nothing"], ["logits"]))
    # keep the node list topologically sorted: the Softmax reading "logits" goes last
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    graph.node.remove(softmax)
    graph.node.append(softmax)
    onnx.checker.check_model(model)
    return model


def opener(bundle, options: BackendOptions):
    """How the classifier opens a bundle's file for the choice (tumor_edge.runtime.classifier)."""
    from tumor_edge.runtime.classifier import Classifier

    return functools.partial(Classifier.from_bundle, bundle, options=options)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMOR_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TUMOR_EDGE_NO_MEASURE", raising=False)
    return tmp_path / "cache"


@pytest.fixture()
def two_speeds(tmp_path):
    """The file the static order prefers (model_int8.onnx) is the slow one; model_fp32.onnx is fast."""
    bundle = make_bundle(tmp_path / "b")
    meta = BundleMetadata.read(bundle)
    onnx.save(slow_quadrant_model(meta), bundle / "model_int8.onnx")
    meta.models["model_int8.onnx"] = describe_file(bundle / "model_int8.onnx", "onnx", "int8")
    meta.write(bundle)
    return bundle


def test_the_measured_fastest_file_runs_not_the_static_first(two_speeds, cache):
    meta = BundleMetadata.read(two_speeds)
    assert meta.default_model() == "model_int8.onnx"  # what 0.2 always ran
    one = BackendOptions(threads=1)
    choice = measure_choice(two_speeds, opener(two_speeds, one), meta, one, budget_s=0.5)
    assert choice.file == "model_fp32.onnx" and choice.engine == "onnxruntime" and choice.threads == 1
    assert set(choice.p50_ms) == {"model_fp32.onnx", "model_int8.onnx"}
    assert choice.p50_ms["model_int8.onnx"] > 5 * choice.p50_ms["model_fp32.onnx"]
    recorded = recorded_choice(two_speeds, meta, BackendOptions(threads=1))
    assert recorded == choice
    assert pick_model(two_speeds, meta, opener(two_speeds, one), one) == "model_fp32.onnx"


def test_the_first_use_measures_and_records(two_speeds, cache):
    from tumor_edge.runtime.classifier import Classifier

    meta = BundleMetadata.read(two_speeds)
    options = BackendOptions(threads=1)
    assert recorded_choice(two_speeds, meta, options) is None
    clf = Classifier.from_bundle(two_speeds, options=options)
    assert clf.backend.path.name == "model_fp32.onnx"
    assert record_path(meta, options).is_file()
    assert str(record_path(meta, options)).startswith(str(cache)), "device-made records live outside the bundle"
    assert not any(p.name.endswith(".json") and p.name != "metadata.json" for p in two_speeds.iterdir())
    override = Classifier.from_bundle(two_speeds, model_file="model_int8.onnx", options=options)
    assert override.backend.path.name == "model_int8.onnx"


def test_the_key_follows_the_bundle_hashes_and_the_threads(two_speeds, cache, tmp_path):
    meta = BundleMetadata.read(two_speeds)
    one, two = record_path(meta, BackendOptions(threads=1)), record_path(meta, BackendOptions(threads=2))
    assert one != two and one.parent == two.parent
    measure_choice(two_speeds, opener(two_speeds, BackendOptions(threads=1)), meta, BackendOptions(threads=1),
                   budget_s=0.2)
    assert recorded_choice(two_speeds, meta, BackendOptions(threads=2)) is None
    other = tmp_path / "other"
    shutil.copytree(two_speeds, other)
    other_meta = BundleMetadata.read(other)
    other_meta.models["model_fp32.onnx"].sha256 = "0" * 64  # another model under the same name: another key
    assert record_path(other_meta, BackendOptions(threads=1)) != one


def test_a_damaged_or_edited_record_is_ignored(two_speeds, cache):
    meta = BundleMetadata.read(two_speeds)
    options = BackendOptions(threads=1)
    measure_choice(two_speeds, opener(two_speeds, options), meta, options, budget_s=0.2)
    path = record_path(meta, options)
    data = json.loads(path.read_text())
    data["choice"]["file"] = "model_int8.onnx"  # someone prefers the slow file, without the record's hash
    path.write_text(json.dumps(data))
    assert recorded_choice(two_speeds, meta, options) is None
    # ... or with every hash an editor can recompute: a bare sha256 of the body, or of the whole record
    body = json.dumps(data["choice"], sort_keys=True).encode()
    data["sha256"] = hashlib.sha256(body).hexdigest()
    for field in [f for f in data if f not in ("version", "bundle", "choice", "sha256")]:
        data[field] = hashlib.sha256(json.dumps({k: data[k] for k in ("version", "bundle", "choice")},
                                                sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(data))
    assert recorded_choice(two_speeds, meta, options) is None, "a record is sealed by this user's secret key"
    path.write_text("{not json")
    assert recorded_choice(two_speeds, meta, options) is None
    assert pick_model(two_speeds, meta, opener(two_speeds, options), options) == "model_fp32.onnx"  # measured again


def test_candidates_leave_out_absent_and_parity_failed_files(two_speeds, cache):
    meta = BundleMetadata.read(two_speeds)
    meta.models["model_int8.onnx"].extra["parity"] = "fail"
    ok, skipped = candidates(two_speeds, meta)
    assert ok == ["model_fp32.onnx"] and "parity verdict is 'fail'" in skipped["model_int8.onnx"]
    meta.models["model_int8.onnx"].extra["parity"] = "not proven"
    meta.metrics = {"parity": {"thresholds": {"min_agreement": 0.99},
                               "files": {"model_int8.onnx": {"agreement": 0.995}}}}
    assert candidates(two_speeds, meta)[0] == ["model_int8.onnx", "model_fp32.onnx"]
    meta.metrics["parity"]["files"]["model_int8.onnx"]["agreement"] = 0.9
    assert candidates(two_speeds, meta)[0] == ["model_fp32.onnx"]
    (two_speeds / "model_int8.onnx").unlink()
    meta = BundleMetadata.read(two_speeds)
    ok, skipped = candidates(two_speeds, meta)
    assert ok == ["model_fp32.onnx"] and skipped["model_int8.onnx"] == "not in this copy of the bundle"
    assert pick_model(two_speeds, meta, opener(two_speeds, BackendOptions())) == "model_fp32.onnx"


def test_classify_names_the_file_and_engine_it_ran(two_speeds, cache, tmp_path):
    from click.testing import CliRunner

    from tumor_edge.cli import main

    scan = save_quadrant(tmp_path / "scan.png", 3)
    result = CliRunner().invoke(main, ["classify", "--json", "--threads", "1", "--model", str(two_speeds),
                                       str(scan)])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    assert row["label"] == "pituitary"
    assert row["model_file"] == "model_fp32.onnx" and row["engine"] == "onnxruntime"
    csv = CliRunner().invoke(main, ["classify", "--csv", "--threads", "1", "--model", str(two_speeds), str(scan)])
    header, first = csv.stdout.splitlines()[:2]
    assert "model_file" in header.split(",") and "engine" in header.split(",")
    assert "model_fp32.onnx" in first and "onnxruntime" in first


def test_verify_measures_records_and_prints_the_choice(two_speeds, cache):
    from click.testing import CliRunner

    from tumor_edge.cli import main
    from tumor_edge.export.reference import record_reference

    record_reference(two_speeds)
    result = CliRunner().invoke(main, ["verify", "--threads", "1", str(two_speeds)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("device choice:"))
    assert line.startswith("device choice: model_fp32.onnx (onnxruntime, 1 threads;") and "model_int8.onnx" in line
    meta = BundleMetadata.read(two_speeds)
    assert recorded_choice(two_speeds, meta, BackendOptions(threads=1)).file == "model_fp32.onnx"


def test_env_prints_the_recorded_choice(two_speeds, cache):
    from click.testing import CliRunner

    from tumor_edge.cli import main

    before = CliRunner().invoke(main, ["env", "--model", str(two_speeds)])
    assert before.exit_code == 0 and "nothing measured yet" in before.stdout
    one = BackendOptions(threads=1)
    measure_choice(two_speeds, opener(two_speeds, one), BundleMetadata.read(two_speeds), one, budget_s=0.2)
    after = CliRunner().invoke(main, ["env", "--json", "--model", str(two_speeds)])
    (recorded,) = json.loads(after.stdout)["engine_choice"]["recorded"]
    assert recorded["file"] == "model_fp32.onnx" and recorded["threads"] == 1
    text = CliRunner().invoke(main, ["env", "--model", str(two_speeds)]).stdout
    assert "engine choice   model_fp32.onnx (onnxruntime) at 1 threads" in text


def _as_another_machine_recorded(bundle, name: str) -> None:
    """Edit the recorded outputs of one file as if the export machine had computed something else for image 3."""
    meta = BundleMetadata.read(bundle)
    rows = [list(r) for r in meta.reference.outputs[name]]
    rows[3] = rows[3][::-1]
    meta.reference.outputs[name] = rows
    meta.write(bundle)


def test_a_file_is_a_candidate_only_after_this_device_reproduced_it(two_speeds, cache):
    """The fast file does not reproduce its recorded outputs here: the first use checks before it times, runs
    the file that does reproduce, and records both results with the choice."""
    from tumor_edge.export.reference import record_reference
    from tumor_edge.runtime.choice import recorded_checks

    record_reference(two_speeds)
    _as_another_machine_recorded(two_speeds, "model_fp32.onnx")
    meta = BundleMetadata.read(two_speeds)
    options = BackendOptions(threads=1)
    assert pick_model(two_speeds, meta, opener(two_speeds, options), options) == "model_int8.onnx"
    checks = recorded_checks(meta, options)
    assert checks["model_fp32.onnx"]["ok"] is False and checks["model_int8.onnx"]["ok"] is True
    choice = recorded_choice(two_speeds, meta, options)
    assert choice.file == "model_int8.onnx" and set(choice.p50_ms) == {"model_int8.onnx"}
    assert "does not reproduce" in choice.skipped["model_fp32.onnx"]
    assert choice.checks["model_int8.onnx"].startswith("model_int8.onnx: top-1 agreement 16/16")


def test_after_a_failed_verify_the_file_is_never_chosen_until_the_bundle_changes(two_speeds, cache):
    from click.testing import CliRunner

    from tumor_edge.cli import main
    from tumor_edge.export.reference import record_reference

    record_reference(two_speeds)
    options = BackendOptions(threads=1)
    meta = BundleMetadata.read(two_speeds)
    assert measure_choice(two_speeds, opener(two_speeds, options), meta, options, budget_s=0.2).file == \
        "model_fp32.onnx"
    original = (two_speeds / "metadata.json").read_text()
    _as_another_machine_recorded(two_speeds, "model_fp32.onnx")
    result = CliRunner().invoke(main, ["verify", "--threads", "1", str(two_speeds)])
    assert result.exit_code == 1 and "model_fp32.onnx" in result.stderr and "does not reproduce" in result.stderr
    meta = BundleMetadata.read(two_speeds)
    assert recorded_choice(two_speeds, meta, options) is None  # the recorded choice named the failed file
    ok, skipped = candidates(two_speeds, meta, options)
    assert ok == ["model_int8.onnx"] and "does not reproduce" in skipped["model_fp32.onnx"]
    for threads in (1, 2):  # every later choice, at any thread count
        other = BackendOptions(threads=threads)
        assert pick_model(two_speeds, meta, opener(two_speeds, other), other) == "model_int8.onnx"
    (two_speeds / "metadata.json").write_text(original)  # the bundle changes back: checked again, and it passes
    meta = BundleMetadata.read(two_speeds)
    assert pick_model(two_speeds, meta, opener(two_speeds, options), options) == "model_fp32.onnx"


def test_a_lone_file_that_does_not_reproduce_never_runs(tmp_path, cache):
    from tumor_edge.errors import TumorEdgeError
    from tumor_edge.export.reference import record_reference
    from tumor_edge.runtime.classifier import Classifier

    bundle = make_bundle(tmp_path / "one")
    record_reference(bundle)
    assert Classifier.from_bundle(bundle).backend.path.name == "model_fp32.onnx"
    _as_another_machine_recorded(bundle, "model_fp32.onnx")
    with pytest.raises(TumorEdgeError, match="does not reproduce"):
        Classifier.from_bundle(bundle)
    assert Classifier.from_bundle(bundle, model_file="model_fp32.onnx")  # a named file is the user's choice


class _LoadedClock:
    """A clock whose machine slows down by `drift` over the budget, as another process takes the CPU: a run of
    `cost` seconds takes cost * (1 + drift * elapsed / budget)."""

    def __init__(self, budget: float, drift: float):
        self.now, self.budget, self.drift = 0.0, budget, drift

    def __call__(self) -> float:
        return self.now

    def runner(self, cost: float):
        def run() -> None:
            self.now += cost * (1.0 + self.drift * min(self.now / self.budget, 1.0))
        return run


def test_timing_interleaves_so_a_load_drift_cannot_pick_the_slower_file():
    """A is 7 % faster than B; the machine slows by 20 % during the budget. Timed one window after the other, the
    file timed second pays the load (A loses when it runs second); in interleaved rounds both see the same load."""
    from tumor_edge.runtime.choice import preferred, time_candidates

    for order in (["model_b", "model_a"], ["model_a", "model_b"]):
        clock = _LoadedClock(budget=10.0, drift=0.2)
        costs = {"model_a": 0.093, "model_b": 0.1}
        calls: list[str] = []
        runners = {name: (lambda n=name, r=clock.runner(costs[name]), c=calls: (c.append(n), r())) for name in order}
        p50 = time_candidates(runners, budget_s=10.0, clock=clock)
        assert calls[:4] == [order[0], order[1], order[1], order[0]]  # A B, B A: no file always runs first
        assert p50["model_a"] < p50["model_b"] < 1.2 * p50["model_a"]
        assert preferred(p50, order, margin=0.0) == "model_a"


def test_the_preferred_order_holds_within_the_noise_margin():
    from tumor_edge.runtime.choice import NOISE_MARGIN, preferred

    order = ["model_int8.onnx", "model_fp32.onnx"]
    near = {"model_int8.onnx": 10.0 * (1 + NOISE_MARGIN) * 0.99, "model_fp32.onnx": 10.0}
    assert preferred(near, order) == "model_int8.onnx"
    far = {"model_int8.onnx": 10.0 * (1 + NOISE_MARGIN) * 1.01, "model_fp32.onnx": 10.0}
    assert preferred(far, order) == "model_fp32.onnx"


def test_without_timing_only_the_file_that_runs_is_checked(two_speeds, cache, monkeypatch):
    """TUMOR_EDGE_NO_MEASURE=1 keeps the format table's order: the first candidate that reproduces runs, and
    nothing else is run on the reference images."""
    from tumor_edge.export.reference import record_reference
    from tumor_edge.runtime.choice import recorded_checks

    record_reference(two_speeds)
    monkeypatch.setenv("TUMOR_EDGE_NO_MEASURE", "1")
    meta = BundleMetadata.read(two_speeds)
    options = BackendOptions(threads=1)
    assert pick_model(two_speeds, meta, opener(two_speeds, options), options) == "model_int8.onnx"
    assert set(recorded_checks(meta, options)) == {"model_int8.onnx"}


def test_the_machine_key_names_every_engine_of_the_engine_table(monkeypatch):
    """A choice measured under one engine version is not reused under another: the key holds the installed
    version of every engine the table lists, a test's engine included."""
    import pytest as installed

    from tumor_edge.contracts import formats
    from tumor_edge.runtime.choice import machine_key

    row = formats.Engine("test-engine", (".test-engine",), "tumor_edge.runtime.backends.onnxruntime_backend",
                         packages=("no-such-distribution", "pytest"))
    monkeypatch.setitem(formats.ENGINES, row.name, row)
    machine_key.cache_clear()
    try:
        key = machine_key()
        assert key["test-engine"] == installed.__version__ and key["onnxruntime"] != "absent"
    finally:
        machine_key.cache_clear()
