"""`classify --heatmap DIR` files: names that two runs cannot share, whole files or none, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from PIL import Image

from tests.runtime.heatmap_models import make_heatmap_bundle
from tests.runtime.models import save_quadrant
from tumor_edge.cli import main
from tumor_edge.runtime import decode_file
from tumor_edge.runtime.classifier import Classifier
from tumor_edge.runtime.explain import HeatmapWriter


@pytest.fixture()
def heatmap_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMOR_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    return make_heatmap_bundle(tmp_path / "hm")


def test_two_runs_writing_one_folder_never_share_a_png(heatmap_bundle, tmp_path):
    """Two runs started on one empty --heatmap folder both number from 0: neither run's overlay replaces the
    other's, and no two result rows name the same PNG."""
    clf = Classifier.from_bundle(heatmap_bundle)
    scans = [save_quadrant(tmp_path / f"run{q}" / "scan.png", q) for q in range(2)]  # one name, two scans
    out = tmp_path / "maps"
    first, second = HeatmapWriter(out), HeatmapWriter(out)
    seen = [decode_file(scan, clf.preprocessing).pixels[0][0] for scan in scans]
    a = first.write(clf.predict(scans[0]), seen[0])
    b = second.write(clf.predict(scans[1]), seen[1])
    assert a != b and a.is_file() and b.is_file()
    assert Image.open(a).tobytes() != Image.open(b).tobytes(), "each row's PNG is its own scan's overlay"
    assert sorted(p.name for p in out.iterdir()) == sorted([a.name, b.name]), "no temporary file left behind"


def test_a_dangling_symlink_heatmap_folder_is_a_one_line_error(heatmap_bundle, tmp_path):
    scan = save_quadrant(tmp_path / "s.png", 1)
    link = tmp_path / "maps"
    link.symlink_to(tmp_path / "gone")
    result = CliRunner().invoke(main, ["classify", "--model", str(heatmap_bundle), "--heatmap", str(link),
                                       str(scan)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(link) in errors[0] and "symbolic link" in errors[0]


def test_interrupted_run_leaves_only_whole_pngs(heatmap_bundle, tmp_path):
    """Ctrl-C in a --heatmap run leaves no truncated PNG: every PNG left in the folder decodes."""
    scans = tmp_path / "scans"
    for i in range(400):
        save_quadrant(scans / f"{i:03d}.png", i % 4, size=96)
    out = tmp_path / "maps"
    env = {**os.environ, "TUMOR_EDGE_NO_MEASURE": "1"}
    command = [sys.executable, "-c", "from tumor_edge.cli import main; main()", "classify", "--no-progress"]
    proc = subprocess.Popen([*command, "--model", str(heatmap_bundle), "--heatmap", str(out), str(scans)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.is_dir() or len(list(out.iterdir())) < 20):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    names = [p.name for p in out.iterdir()]
    assert names, "the run wrote nothing before the interrupt"
    assert all(name.endswith("_heatmap.png") for name in names), names  # no temporary file left behind
    for name in names:
        with Image.open(out / name) as image:
            image.load()  # a truncated PNG raises here


def test_the_temporary_png_is_never_written_through_a_planted_symlink(heatmap_bundle, tmp_path, monkeypatch):
    """Someone who can write the --heatmap folder plants symbolic links where the temporary file will be created
    (the name a predictable scheme gives it, and the first name the random scheme will try): the overlay is still
    written, and the files the links point to are untouched."""
    import tempfile

    clf = Classifier.from_bundle(heatmap_bundle)
    out = tmp_path / "maps"
    writer = HeatmapWriter(out)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / f".{os.getpid()}-0.png.tmp").symlink_to(victim)
    names = iter(["planted", "fresh"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    for prefix, suffix in ((".", ".png.tmp"), ("", ""), (".", ""), ("", ".png"), ("", ".tmp")):
        (out / f"{prefix}planted{suffix}").symlink_to(victim)
    scan = save_quadrant(tmp_path / "scan.png", 2)
    written = writer.write(clf.predict(scan), decode_file(scan, clf.preprocessing).pixels[0][0])
    assert victim.read_bytes() == b"precious"
    assert written.is_file() and not written.is_symlink() and Image.open(written).format == "PNG"
    assert sorted(p.name for p in out.iterdir() if not p.is_symlink()) == [written.name], "no temporary file left"


def test_the_temporary_png_is_written_through_its_descriptor_not_reopened_by_name(heatmap_bundle, tmp_path,
                                                                                   monkeypatch):
    """Between mkstemp and the write, someone who can write the folder could swap the temporary name for a link:
    the PNG must go through the descriptor mkstemp opened, never through a second open of the name."""
    clf = Classifier.from_bundle(heatmap_bundle)
    out = tmp_path / "maps"
    writer = HeatmapWriter(out)
    scan = save_quadrant(tmp_path / "scan.png", 2)
    targets = []
    save = Image.Image.save

    def spy(image, fp, *args, **kwargs):
        targets.append(fp)
        return save(image, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", spy)
    written = writer.write(clf.predict(scan), decode_file(scan, clf.preprocessing).pixels[0][0])
    assert written.is_file() and targets
    assert not [t for t in targets if isinstance(t, (str, os.PathLike))], targets


def test_an_interrupt_inside_mkstemp_leaves_no_temporary_file(heatmap_bundle, tmp_path, monkeypatch):
    """Ctrl-C lands after mkstemp made its file but before the name reached the writer (the window a loaded
    machine hits): the folder is left as it was."""
    import tempfile

    clf = Classifier.from_bundle(heatmap_bundle)
    writer = HeatmapWriter(tmp_path / "maps")
    real = tempfile.mkstemp

    def interrupted(*args, **kwargs):
        fd, _ = real(*args, **kwargs)
        os.close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(tempfile, "mkstemp", interrupted)
    scan = save_quadrant(tmp_path / "scan.png", 2)
    with pytest.raises(KeyboardInterrupt):
        writer.write(clf.predict(scan), decode_file(scan, clf.preprocessing).pixels[0][0])
    assert list((tmp_path / "maps").iterdir()) == []
