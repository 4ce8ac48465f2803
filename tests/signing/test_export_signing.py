"""export's signing step on a bundle folder (no TensorFlow): it signs the finished bundle so the signature
covers every file, and `export --force` removes an old signature with the files it replaces."""

from __future__ import annotations

from tumor_edge.export.exporter import prepare_out_dir, sign_export
from tumor_edge.signing import SIGNATURE_FILE
from tumor_edge.signing.verify import verify_bundle_signature


def test_sign_export_signs_every_file(unsigned_bundle, keys):
    assert sign_export(unsigned_bundle, None) is None
    assert not (unsigned_bundle / SIGNATURE_FILE).exists()
    assert sign_export(unsigned_bundle, keys[0]) == unsigned_bundle / SIGNATURE_FILE
    assert verify_bundle_signature(unsigned_bundle, keys[1]).files == ["metadata.json", "model_fp32.onnx"]


def test_export_force_removes_an_old_signature_and_keeps_the_users_files(signed_bundle):
    (signed_bundle / "my-notes.txt").write_text("mine")
    prepare_out_dir(signed_bundle, force=True)
    assert sorted(p.name for p in signed_bundle.iterdir()) == ["my-notes.txt"]
