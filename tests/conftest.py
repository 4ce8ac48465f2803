"""Shared, expensive fixtures (generate data once, train once, export once per test session) and the test tiers.

The tiers are structural: a test whose fixtures reach one that trains or exports (`SLOW_FIXTURES`, through any
chain of fixtures) is marked slow here, so `pytest -m "not slow"` never trains or exports. A run that selected no
slow test is guarded besides, two ways: training or export entered in this process or a child that keeps
PYTHONPATH fails the run and names the function (`tests/tier_guard.py`); and what only training and export write
(a run's `history.csv`, a bundle's `metadata.json` with `export_seconds`) found under the session's temporary
folder at its end fails the run and names the folder, which is named after its test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests import tier_guard  # noqa: E402
from tests.toydata import make_toy_dataset  # noqa: E402

# Fixtures that train or export a model, wherever they are defined: a test reaching one is slow.
SLOW_FIXTURES = frozenset({
    "trained_run", "exported_bundle",  # below
    "pretrained_run", "jax_run", "notop_weights",  # tests/train/conftest.py
    "tiny_onnx",  # tests/bench/conftest.py: `tumor-edge export` of a tiny model
    "logits_model",  # tests/export/test_foreign.py: fits a small CNN
})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Guard a run of fast tests only: children find the guard as their `sitecustomize`."""
    if not session.items or any(item.get_closest_marker("slow") for item in session.items):
        return
    folder = Path(tempfile.mkdtemp(prefix="tumor-edge-tier-"))
    shutil.copyfile(tier_guard.__file__, folder / "sitecustomize.py")
    (folder / "entered.txt").touch()
    session.config.stash[_GUARD_FOLDER] = folder
    os.environ[tier_guard.RECORD] = str(folder / "entered.txt")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    tier_guard.install()


def _trained_or_exported(root: Path) -> list[str]:
    """The folders under `root` holding what only training (Keras' history.csv) or export (a metadata.json that
    records its export time) writes."""
    found = []
    for folder, _, files in os.walk(root):
        if "history.csv" in files:
            found.append(f"trained into {folder}")
        if "metadata.json" in files and '"export_seconds"' in Path(folder, "metadata.json").read_text(errors="replace"):
            found.append(f"exported into {folder}")
    return found


def pytest_sessionfinish(session: pytest.Session) -> None:
    folder = session.config.stash.get(_GUARD_FOLDER, None)
    if folder is None:
        return
    entered = (folder / "entered.txt").read_text(encoding="utf-8").splitlines()
    shutil.rmtree(folder, ignore_errors=True)
    basetemp = session.config.stash.get(_BASETEMP, None)
    entered += _trained_or_exported(basetemp) if basetemp is not None else []
    if entered:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line("fast tier trained or exported: " + "; ".join(sorted(set(entered))), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_GUARD_FOLDER = pytest.StashKey[Path]()
_BASETEMP = pytest.StashKey[Path]()


@pytest.fixture(scope="session", autouse=True)
def _private_model_cache(tmp_path_factory, request):
    """The runtime caches optimised models under ~/.cache/tumor-edge; the tests (and the processes they start,
    which inherit the variable) use a folder of their own."""
    os.environ["TUMOR_EDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("model-cache"))
    request.config.stash[_BASETEMP] = tmp_path_factory.getbasetemp()


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> Path:
    """ROOT/Training/<class>/*.jpg and ROOT/Testing/<class>/*.jpg, four classes, 80 px, learnable."""
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="session")
def train_dataset(tmp_path_factory) -> Path:
    """A larger toy set for the one model the session trains: enough steps for BatchNorm to settle."""
    return make_toy_dataset(tmp_path_factory.mktemp("train-data") / "data", train_per_class=48,
                            test_per_class=10, size=80, seed=7)


@pytest.fixture(scope="session")
def trained_run(train_dataset, tmp_path_factory) -> Path:
    """One tiny InceptionV3 (75 px, from scratch, 4 epochs) trained once per session on the toy data."""
    from tumor_edge.train.fit import TrainConfig, run_training

    out = tmp_path_factory.mktemp("run") / "run"
    # float32 pinned: `auto` would pick bfloat16 on a CI runner with AMX, and the fixture must not vary by machine
    return run_training(TrainConfig(data=train_dataset, out=out, image_size=75, weights="none", epochs=4,
                                    batch_size=16, bn_momentum=0.8, seed=1, verbose=2, mixed_precision="off",
                                    show_progress=False))


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory) -> Path:
    """Small realistic data: real MRI template slices with simulated lesions (synthetic), tiny size and count."""
    from tumor_edge.demo.generate import DemoDataConfig, generate

    root = tmp_path_factory.mktemp("demo") / "data"
    generate(DemoDataConfig(root, per_class=8, size=96, seed=0))
    return root


@pytest.fixture(scope="session")
def exported_bundle(trained_run, tmp_path_factory) -> Path:
    """`trained_run` exported once per session to every format (ONNX and TFLite, fp32/fp16/int8), parity proven.

    The parity contract's thresholds for fp32/fp16 agreement; looser accuracy/AUC drops for int8, since the toy
    test split has 40 images (one image is 2.5 points) and a tiny 4-epoch model has near-ties that int8 may flip.
    40 images cannot prove a 1-point tolerance, so verdicts "not proven" are accepted (allow_unproven). The failing
    side of parity is tested on its own (a planted mismatch). The last-bundle marker goes to a temporary state folder,
    not the user's home. Converters run in this process (isolate=False): the default's TensorFlow worker and
    TensorFlow-free children cost process starts and buy memory this 75 px model does not need;
    tests/export/test_export_plan.py, test_foreign.py and test_format_table.py cover the default, isolated path.
    """
    from tumor_edge.export.exporter import ExportConfig, export_bundle
    from tumor_edge.export.parity import ParityThresholds

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        export_bundle(ExportConfig(source=trained_run, out=out, int8=True, fp16=True, show_progress=False,
                                   thresholds=ParityThresholds(max_accuracy_drop=10.0, max_auc_drop=0.05),
                                   allow_unproven=True, isolate=False))
    return out
