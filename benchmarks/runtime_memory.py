#!/usr/bin/env python
"""Peak memory of `tumor-edge classify` when many files fail: is it bounded, whatever the number of failures?

    python -m benchmarks.runtime_memory                       # 2,000 good files vs 2,000 with 20 % bad
    python -m benchmarks.runtime_memory --files 400 --megapixels 3
    python -m benchmarks.runtime_memory --pythonpath OLD_TREE  # the same runs on another checkout (e.g. 0.1.0)

Two runs of the real command in child processes, on a tiny quadrant bundle (the model is not what is measured):
every file a good `--megapixels` JPEG, then the same count with `--bad` of them hostile (truncated JPEGs of the
same size, text named .jpg, zero-byte files, a PNG bomb, a deflated DICOM bomb, a FIFO). The files are hard links
to a few originals, so 2,000 of them cost a few megabytes of disk. The peak resident memory of each child is read
from `wait4`; the goal is the bad run within 10 % of the good one. A last run classifies the largest
images the caps allow (a 16-bit grey PNG and an RGBA PNG just under the pixel cap) one at a time, to show what
one file may cost.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.runtime.hostile import deflated_dicom_bomb
from tests.runtime.models import make_bundle, png_bomb, write_dicom
from tumor_edge.machine import host, load_average

HERE = Path(__file__).resolve().parent


def _jpeg(megapixels: float, seed: int) -> bytes:
    side = int((megapixels * 1e6) ** 0.5)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (side // 16, side // 16), dtype=np.uint8)  # smooth-ish, so it compresses
    image = Image.fromarray(base).resize((side, side), Image.Resampling.BILINEAR).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_originals(folder: Path, megapixels: float) -> dict[str, Path]:
    """One file of each kind; the sets are hard links to these."""
    folder.mkdir(parents=True, exist_ok=True)
    good = _jpeg(megapixels, 0)
    originals = {"good": folder / "good.jpg"}
    originals["good"].write_bytes(good)
    # Both sets start with this small good DICOM, so both runs import pydicom (~22 MB resident), which the bad
    # set needs for its DICOM bomb: the comparison is then about the failures, not about an import.
    originals["dicom"] = write_dicom(folder / "good.dcm", (np.arange(64 * 64).reshape(64, 64) % 512).astype(np.uint16))
    for i, fraction in enumerate((0.2, 0.5, 0.8)):  # truncated at several points: partly decoded pixels
        originals[f"truncated{i}"] = folder / f"truncated{i}.jpg"
        originals[f"truncated{i}"].write_bytes(good[: int(len(good) * fraction)])
    originals["text"] = folder / "text.jpg"
    originals["text"].write_text("not an image\n" * 100)
    originals["empty"] = folder / "empty.jpg"
    originals["empty"].write_bytes(b"")
    originals["bomb"] = png_bomb(folder / "bomb.png", 9_000, 9_000)
    originals["dicom_bomb"] = deflated_dicom_bomb(folder / "bomb.dcm")  # 12000x12000, 16-bit
    return originals


def make_set(folder: Path, originals: dict[str, Path], files: int, bad_fraction: float,
             exclude: tuple[str, ...] = ()) -> Path:
    """`files` names in `folder`, every 1/bad_fraction-th one hostile (a cycle through the bad kinds)."""
    folder.mkdir(parents=True, exist_ok=True)
    bad_kinds = [k for k in [*originals, "fifo"] if k not in ("good", "dicom", *exclude)]
    every = round(1 / bad_fraction) if bad_fraction > 0 else 0
    bad = 0
    for i in range(files):
        if every and i % every == every - 1:
            kind = bad_kinds[bad % len(bad_kinds)]
            bad += 1
        else:
            kind = "dicom" if i == 0 else "good"
        if kind == "fifo":
            os.mkfifo(folder / f"{i:05d}")  # suffix-less: the walk must not open it
            continue
        source = originals[kind]
        os.link(source, folder / f"{i:05d}{source.suffix}")
    return folder


def run_classify(paths: list[Path], bundle: Path, pythonpath: str | None) -> dict:
    """The command in a child process; its own peak RSS from wait4 (not the maximum over all children)."""
    tree = pythonpath or str(HERE.parent)
    env = dict(os.environ, PYTHONPATH=tree)
    env.pop("TUMOR_EDGE_MODEL", None)
    command = [sys.executable, "-m", "tumor_edge.cli", "classify", *map(str, paths), "-m", str(bundle), "--json",
               "--no-progress"]
    start = time.perf_counter()
    with open(os.devnull, "w") as sink, tempfile.TemporaryFile() as errors:
        # cwd = the tree: `python -m` puts the working directory first on sys.path, before PYTHONPATH
        process = subprocess.Popen(command, stdout=sink, stderr=errors, env=env, cwd=tree)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    return {"exit": process.returncode, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "seconds": round(time.perf_counter() - start, 1),
            "errors": sum(line.startswith("error:") for line in stderr.splitlines()),
            "traceback": "Traceback" in stderr}


def largest_allowed(folder: Path) -> dict[str, Path]:
    """The biggest images the caps let through: 8000x7999 pixels (just under 64 Mpx), 16-bit grey and RGBA."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = 7999, 8000
    ramp = (np.arange(width, dtype=np.uint32) * 8).astype(np.uint16)
    grey16 = folder / "grey16.png"
    Image.fromarray(np.broadcast_to(ramp, (height, width)).copy()).save(grey16, compress_level=9)
    rgba = folder / "rgba.png"
    row = np.zeros((height, width, 4), np.uint8)
    row[..., 0] = (np.arange(width) % 256).astype(np.uint8)
    row[..., 3] = 255
    Image.fromarray(row, "RGBA").save(rgba, compress_level=9)
    return {"grey16": grey16, "rgba": rgba}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--bad", type=float, default=0.2, help="fraction of hostile files (default 0.2)")
    parser.add_argument("--megapixels", type=float, default=9.0, help="size of the good and truncated JPEGs")
    parser.add_argument("--workdir", type=Path, default=None, help="where to make the files (default: a temp dir)")
    parser.add_argument("--pythonpath", default=None, help="run another checkout's tumor_edge (e.g. 0.1.0)")
    parser.add_argument("--exclude", action="append", default=[], metavar="KIND",
                        help="leave a bad kind out (truncated0-2, text, empty, bomb, dicom_bomb, fifo); for 0.1.0, "
                             "which hangs on a FIFO and peaks at 5.4 GB on the DICOM bomb: --exclude fifo "
                             "--exclude dicom_bomb")
    parser.add_argument("--skip-largest", action="store_true", help="skip the largest-allowed-image runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tumor-edge-memory-") as tmp:
        work = args.workdir or Path(tmp)
        bundle = make_bundle(work / "bundle")
        record = {"host": host(), "load_average_before": load_average(), "files": args.files,
                  "bad_fraction": args.bad, "megapixels": args.megapixels, "pythonpath": args.pythonpath,
                  "excluded": args.exclude}
        if args.files:  # --files 0: only the largest-allowed-image runs
            originals = make_originals(work / "originals", args.megapixels)
            good = make_set(work / "good", originals, args.files, 0.0)
            bad = make_set(work / "bad", originals, args.files, args.bad, tuple(args.exclude))
            record["good"] = run_classify([good], bundle, args.pythonpath)
            record["bad"] = run_classify([bad], bundle, args.pythonpath)
            record["ratio_bad_to_good"] = round(record["bad"]["peak_rss_mb"] / record["good"]["peak_rss_mb"], 3)
            record["within_10_percent"] = record["ratio_bad_to_good"] <= 1.10
        if not args.skip_largest:
            record["largest_allowed"] = {name: run_classify([path], bundle, args.pythonpath)
                                         for name, path in largest_allowed(work / "largest").items()}
        record["load_average_after"] = load_average()
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
