"""The standard suite's stand-in model: the project's own classifier with random weights, exported by the
project's own `tumor-edge export`, so what is timed is exactly what users get.

Latency does not depend on the weights' values, so no training is needed: the classifier is built untrained
(`tumor_edge.train.model.build_classifier`), saved as a run folder through the run-folder contract with a split
of generated demo images (calibration and benchmark inputs), and exported with
`tumor-edge export RUN --out BUNDLE --int8 --fp16 --no-parity` (parity is off: random weights prove nothing).
This is a script beside the package, not part of it: bench itself never imports train.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from tumor_edge.contracts.bundle import BundleMetadata
from tumor_edge.contracts.formats import CONTAINERS, ENABLING_OPTIONS, select
from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.contracts.run_folder import RunConfig, RunFolder
from tumor_edge.errors import TumorEdgeError

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
RANDOM_NOTE = "random weights (latency benchmark stand-in): predictions are meaningless"
# Export options beyond the documented four that keep the stand-in's export short: calibration needs only a
# few images (random weights make the calibration-method choice meaningless). Override with --export-args.
QUICK_EXPORT_ARGS = ("--calib-count", "32", "--select-count", "8", "--calib-methods", "minmax", "--quiet")

Log = Callable[[str], None]


def expected_files() -> list[str]:
    """Every file an `export --int8 --fp16` of every container writes: the format table's rows."""
    return [f.file for f in select(CONTAINERS, set(ENABLING_OPTIONS))]


def bundle_complete(bundle_dir: Path, image_size: int) -> bool:
    """Whether a stand-in bundle from an earlier run is there, whole, and of this image size."""
    try:
        meta = BundleMetadata.read(bundle_dir)
    except TumorEdgeError:
        return False
    return (meta.preprocessing.height == image_size and set(expected_files()) <= set(meta.models)
            and all((bundle_dir / name).is_file() for name in meta.models))


def make_images(folder: Path, image_size: int, per_class: int, log: Log) -> Path:
    """A dataset folder (Training/ and Testing/ per class) of generated demo scans (synthetic lesions on real
    MRI templates), else synthetic head phantoms when the demo's template data is not installed."""
    try:
        from tumor_edge.demo.generate import DemoDataConfig, generate

        generate(DemoDataConfig(folder, per_class=per_class, size=image_size, seed=0, force=True,
                                show_progress=False))
        return folder
    except (ImportError, OSError, TumorEdgeError) as err:
        log(f"no demo images ({err}); synthetic head phantoms instead")
    import numpy as np
    from PIL import Image

    from tumor_edge.bench.targets import phantom_slice

    rng = np.random.default_rng(0)
    for split, count in (("Training", per_class), ("Testing", max(2, per_class // 4))):
        for name in CLASSES:
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(phantom_slice((image_size, image_size), rng)).save(folder / split / name / f"{i}.png")
    return folder


def write_random_run(run_dir: Path, image_size: int, data_root: Path, seed: int = 0) -> RunFolder:
    """A run folder holding the untrained classifier, its config and a split of `data_root`, as `train` writes
    them (the files named by the run-folder contract)."""
    import keras

    from tumor_edge.data.dataset import discover, stratified_split, write_split
    from tumor_edge.train.model import build_classifier

    run = RunFolder(run_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    index = discover(data_root)
    keras.utils.set_random_seed(seed)
    build_classifier(len(index.classes), image_size, weights=None).save(run.model)
    train, val = stratified_split(index.train, 0.25, seed)
    write_split(run.split, index.root, index.classes, {"train": train, "val": val, "test": index.test}, seed, 0.25)
    RunConfig(classes=list(index.classes), preprocessing=Preprocessing(image_size, image_size, "bilinear", "none"),
              data_root=str(index.root.resolve()), counts=index.counts(),
              train_config={"weights": None, "epochs": 0}, created=datetime.now(timezone.utc).isoformat(),
              extra={"note": RANDOM_NOTE}).write(run.config)
    return run


def export_with_cli(run_dir: Path, bundle_dir: Path, state_dir: Path, extra_args: Sequence[str], log: Log,
                    timeout: float = 3600.0) -> None:
    """`tumor-edge export RUN --out BUNDLE --int8 --fp16 --no-parity --force` in a fresh process (export's
    memory goes with it). Export records its bundle as the user's last one: a random-weight stand-in must not
    become that, so its state folder is a private one."""
    cmd = [sys.executable, "-m", "tumor_edge.cli", "export", str(run_dir), "--out", str(bundle_dir), "--int8",
           "--fp16", "--no-parity", "--force", *extra_args]
    log("running " + " ".join(cmd[2:]))
    env = dict(os.environ, XDG_STATE_HOME=str(state_dir), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise TumorEdgeError(f"export of the stand-in failed (exit {proc.returncode}): "
                             f"{tail[-1] if tail else 'no message'}", run_dir)


def stand_in_bundle(workdir: Path, image_size: int, log: Log, rebuild: bool = False,
                    export_args: Sequence[str] = QUICK_EXPORT_ARGS) -> tuple[Path, Path, float]:
    """(bundle, run folder, seconds spent building) of the stand-in under workdir; reused when a complete one
    of this image size is already there (unless `rebuild`)."""
    import time

    data, run_dir, bundle_dir = workdir / "data", workdir / "run", workdir / "bundle"
    if not rebuild and bundle_complete(bundle_dir, image_size) and RunFolder(run_dir).is_run():
        log(f"reusing the stand-in bundle in {bundle_dir}")
        return bundle_dir, run_dir, 0.0
    start = time.perf_counter()
    log(f"building a random-weight {image_size}px classifier and exporting it to {bundle_dir}")
    data_root = make_images(data, image_size, per_class=16, log=log)
    write_random_run(run_dir, image_size, data_root)
    export_with_cli(run_dir, bundle_dir, workdir / "state", export_args, log)
    return bundle_dir, run_dir, time.perf_counter() - start
