"""Input checks made in the decode workers, beside decoding, not after inference on the model's thread: the same
findings as before, for files of every outcome, in input order."""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image

import tumor_edge.runtime.classifier as pipeline
import tumor_edge.runtime.postprocess as postprocess
from tests.runtime.models import quadrant_image
from tumor_edge.runtime.classifier import Classifier, decode_file


def _files(tmp_path):
    paths = []
    for name, pixels in [("a.png", quadrant_image(1)), ("blank.png", np.zeros((64, 64, 3), np.uint8)),
                         ("noise.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)),
                         ("b.png", quadrant_image(2))]:
        Image.fromarray(pixels).save(tmp_path / name)
        paths.append(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    paths.insert(2, tmp_path / "broken.png")
    return paths


def _spy(module, monkeypatch):
    """Records the thread each call of the real `input_warnings` ran on."""
    calls: list[str] = []
    real = module.input_warnings

    def spy(pixels):
        calls.append(threading.current_thread().name)
        return real(pixels)

    monkeypatch.setattr(module, "input_warnings", spy)
    return calls


def test_the_checks_run_in_the_decode_workers(bundle, tmp_path, monkeypatch):
    clf = Classifier.from_bundle(bundle)
    in_workers, after_inference = _spy(pipeline, monkeypatch), _spy(postprocess, monkeypatch)
    results = list(clf.iter_predictions(_files(tmp_path), batch_size=2, workers=2))
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert len(in_workers) == 4 and all(name.startswith("tumor-edge-decode") for name in in_workers)
    assert after_inference == []


def test_the_same_warnings_as_checks_made_after_inference(bundle, tmp_path):
    clf = Classifier.from_bundle(bundle)
    files = _files(tmp_path)
    for workers in (0, 2):
        streamed = list(clf.iter_predictions(files, batch_size=2, workers=workers))
        good = [r for r in streamed if r.ok]
        pixels = [decode_file(r.source, clf.preprocessing).pixels[0][0] for r in good]  # the checks made here
        direct = clf.predictions(np.stack(pixels), [(r.source, None, None) for r in good])
        assert [r.warnings for r in good] == [d.warnings for d in direct]
        assert good[1].warnings[0].startswith("blank") and good[2].warnings[0].startswith("looks like noise")
        assert good[0].warnings == () and good[3].warnings == ()
