"""A signature binds what loads, and trust settings cannot be turned off or rolled back by accident.

- The signature is checked against the digests of the bytes loaded: a bundle folder exchanged for an unsigned,
  self-consistent one right after the signature check (a hook on that check, standing in for renameat2's
  RENAME_EXCHANGE) is refused, not run.
- A signed bundle carries a release version inside what is signed; a trust setting can pin a minimum version or
  one bundle's digest, so an older bundle signed with the same key is refused.
- $TUMOR_EDGE_TRUST set but empty is an error, not "off"; a missing key file exits 1, as classify's help says
  (2 is "some inputs failed").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from tests.runtime.models import quadrant_metadata, quadrant_model, save_quadrant
from tumor_edge.cli import main
from tumor_edge.contracts.bundle import METADATA_FILE, BundleMetadata, describe_file
from tumor_edge.errors import ModelError
from tumor_edge.runtime import BackendOptions, Classifier
from tumor_edge.signing import SIGNATURE_FILE, TRUST_ENV, SignatureError, TrustSettingError
from tumor_edge.signing.sign import sign_bundle
from tumor_edge.signing.trust import parse_trust

MODEL = "model_fp32.onnx"


@pytest.fixture(autouse=True)
def _private_state(tmp_path, monkeypatch):
    monkeypatch.setenv("TUMOR_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("TUMOR_EDGE_MODEL", raising=False)
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture()
def scan(tmp_path) -> Path:
    return save_quadrant(tmp_path / "scan.png", 3)  # bottom-right: pituitary


def _unsigned_lookalike(signed: Path, where: Path) -> Path:
    """A self-consistent bundle that always answers 'glioma', with the signed bundle's model.sig copied in."""
    where.mkdir()
    model = quadrant_model(metadata=quadrant_metadata())
    next(t for t in model.graph.initializer if t.name == "B").float_data[:] = [100.0, 0.0, 0.0, 0.0]
    onnx.save(model, where / MODEL)
    meta = BundleMetadata.read(signed)
    meta.models = {MODEL: describe_file(where / MODEL, "onnx", "fp32")}
    meta.reference = None
    meta.write(where)
    shutil.copy(signed / SIGNATURE_FILE, where / SIGNATURE_FILE)
    return where


def _exchange(a: Path, b: Path) -> None:
    spare = a.with_name(a.name + ".spare")
    a.rename(spare)
    b.rename(a)
    spare.rename(b)


def test_a_bundle_exchanged_right_after_its_signature_check_is_refused(signed_bundle, keys, scan, tmp_path,
                                                                       monkeypatch):
    """Finding (high): the folder exchanged with an unsigned, self-consistent one right after model.sig was
    checked printed `signature: ok`, then ran the unsigned model."""
    import tumor_edge.signing.verify as verify_module

    other = _unsigned_lookalike(signed_bundle, tmp_path / "other")
    real = verify_module.verify_bundle_signature
    exchanged = []

    def check_then_exchange(bundle, public_key):
        result = real(bundle, public_key)
        _exchange(signed_bundle, other)
        exchanged.append(bundle)
        return result

    monkeypatch.setattr(verify_module, "verify_bundle_signature", check_then_exchange)
    result = CliRunner().invoke(main, ["classify", "--model", str(signed_bundle), str(scan)],
                                env={TRUST_ENV: str(keys[1])})
    assert exchanged, "the hook did not run: the test proves nothing"
    assert result.exit_code != 0 and "glioma" not in result.stdout, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "signed" in errors[0] and "Traceback" not in result.output


def test_the_open_stage_binds_the_loaded_bytes_to_the_signature(signed_bundle, keys, tmp_path, monkeypatch):
    """Through the API: metadata.json read from the signed folder, the folder then exchanged before the model is
    read; the signature check at load compares what was loaded, so it refuses."""
    import tumor_edge.contracts.bundle as schema

    assert Classifier.from_bundle(signed_bundle, options=BackendOptions(trust=str(keys[1]))).classes
    other = _unsigned_lookalike(signed_bundle, tmp_path / "other")
    real = schema.BundleMetadata.read.__func__

    def read_then_exchange(cls, bundle_dir):
        metadata = real(cls, bundle_dir)
        _exchange(signed_bundle, other)
        return metadata

    monkeypatch.setattr(schema.BundleMetadata, "read", classmethod(read_then_exchange))
    with pytest.raises(ModelError) as caught:  # the size or sha256 check, or the signature, whichever sees it first
        Classifier.from_bundle(signed_bundle, options=BackendOptions(trust=str(keys[1])))
    assert "\n" not in str(caught.value)


def test_an_unsigned_bundle_is_refused_at_load_under_a_trust_setting(unsigned_bundle, keys):
    with pytest.raises(SignatureError, match="not signed"):
        Classifier.from_bundle(unsigned_bundle, options=BackendOptions(trust=str(keys[1])))


def test_an_added_file_is_refused_at_load(signed_bundle, keys):
    (signed_bundle / "notes.txt").write_text("added after signing")
    with pytest.raises(SignatureError, match="added after signing"):
        Classifier.from_bundle(signed_bundle, options=BackendOptions(trust=str(keys[1])))


def _release(bundle: Path, version: str, keys) -> Path:
    data = json.loads((bundle / METADATA_FILE).read_text())
    data["release"] = {"id": "test-bundle", "version": version}
    (bundle / METADATA_FILE).write_text(json.dumps(data))
    sign_bundle(bundle, keys[0], force=True)
    return bundle


def test_a_minimum_version_pin_refuses_an_older_signed_bundle(signed_master, keys, tmp_path):
    """Finding (low): an older bundle validly signed with the same key was accepted (rollback)."""
    old = _release(Path(shutil.copytree(signed_master, tmp_path / "old")), "2026-01-01T00:00:00Z", keys)
    new = _release(Path(shutil.copytree(signed_master, tmp_path / "new")), "2026-12-01T00:00:00Z", keys)
    pinned = f"{keys[1]},min-version=2026-06-01T00:00:00Z"
    runner = CliRunner()
    refused = runner.invoke(main, ["verify", str(old), "--trust", pinned])
    assert refused.exit_code != 0 and "older than the pinned minimum" in refused.output, refused.output
    accepted = runner.invoke(main, ["verify", str(new), "--trust", pinned])
    assert accepted.exit_code == 0, accepted.output
    assert "release 2026-12-01T00:00:00Z" in accepted.output
    with pytest.raises(SignatureError, match="older than the pinned minimum"):
        Classifier.from_bundle(old, options=BackendOptions(trust=pinned))


def test_a_bundle_digest_pin_accepts_that_bundle_only(signed_master, keys, tmp_path):
    one = Path(shutil.copytree(signed_master, tmp_path / "one"))
    other = _release(Path(shutil.copytree(signed_master, tmp_path / "other")), "2026-12-01T00:00:00Z", keys)
    runner = CliRunner()
    first = runner.invoke(main, ["verify", str(one), "--trust", str(keys[1])])
    digest = first.output.split("bundle=")[1].split(",")[0]
    pinned = f"{keys[1]},bundle={digest}"
    assert runner.invoke(main, ["verify", str(one), "--trust", pinned]).exit_code == 0
    refused = runner.invoke(main, ["verify", str(other), "--trust", pinned])
    assert refused.exit_code != 0 and "not the pinned bundle" in refused.output


def test_a_bundle_without_a_release_fails_a_version_pin(signed_master, keys, tmp_path):
    bundle = Path(shutil.copytree(signed_master, tmp_path / "b"))
    data = json.loads((bundle / METADATA_FILE).read_text())
    data.pop("release", None)
    (bundle / METADATA_FILE).write_text(json.dumps(data))
    sign_bundle(bundle, keys[0], force=True)
    with pytest.raises(SignatureError, match="carries no release version"):
        Classifier.from_bundle(bundle, options=BackendOptions(trust=f"{keys[1]},min-version=2026-01-01T00:00:00Z"))


@pytest.mark.parametrize("setting, problem", [("", "empty"), ("k.pem,newer=1", "unknown trust pin"),
                                              ("k.pem,min-version=yesterday", "UTC time"),
                                              ("k.pem,bundle=abc", "64 hexadecimal")])
def test_bad_trust_settings_are_one_line(setting, problem):
    with pytest.raises(TrustSettingError, match=problem):
        parse_trust(setting)


@pytest.mark.parametrize("command", ["classify", "verify"])
def test_an_empty_trust_variable_is_an_error_not_off(signed_bundle, scan, command):
    """Finding (low): `TUMOR_EDGE_TRUST=` silently turned checking off."""
    args = ["classify", "--model", str(signed_bundle), str(scan)] if command == "classify" else \
        ["verify", str(signed_bundle)]
    result = CliRunner().invoke(main, args, env={TRUST_ENV: ""})
    assert result.exit_code == 1, result.output
    assert TRUST_ENV in result.output and "Traceback" not in result.output


def test_a_missing_key_file_exits_1_not_2_in_classify(signed_bundle, scan, tmp_path):
    """Finding (low): classify's help keeps exit 2 for "some inputs failed"; a missing key file exited 2."""
    result = CliRunner().invoke(main, ["classify", "--model", str(signed_bundle), str(scan), "--trust",
                                       str(tmp_path / "missing.pem")])
    assert result.exit_code == 1, result.output
    assert "public key not found" in result.output


def test_bench_honours_the_trust_variable(unsigned_bundle, keys, tmp_path):
    """Finding (low): `bench` ignored $TUMOR_EDGE_TRUST and timed an unsigned bundle on a device told to trust only
    signed ones. It opens each file through the runtime's open stage, which checks the signature over the bytes it
    loads."""
    result = CliRunner().invoke(main, ["bench", "--model", str(unsigned_bundle), "--json", str(tmp_path / "b.json"),
                                       "--min-runs", "1", "--min-seconds", "0"], env={TRUST_ENV: str(keys[1])})
    assert result.exit_code != 0, result.output
    assert "not signed" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b.json").exists()
