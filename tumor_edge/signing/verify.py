"""`verify_bundle_signature`: does BUNDLE/model.sig, checked with a trusted public key, cover exactly the files
the bundle holds, each unchanged?

model-signing decides (it checks the signature over the signed statement, then hashes the folder and compares).
When it refuses, this module says why in one line naming the file: for a changed, added or missing file it
compares the signed statement (authentic at that point: model-signing reports a hash mismatch only after the
signature itself verified) with the folder's own sha256s. After model-signing accepts, the statement is checked
to be one tumor-edge would have made: file-by-file sha256 with nothing left out but model.sig, so a bundle signed
by other tools with `--ignore-paths metadata.json` is not taken as fully signed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tumor_edge.contracts.bundle import sha256_file
from tumor_edge.errors import ModelError, first_line
from tumor_edge.signing import SIGNATURE_FILE, SignatureError
from tumor_edge.signing.sign import bundle_files, fingerprint, hashing_config, load_public_key, model_signing

MAX_SIGNATURE_BYTES = 16 << 20  # a signature lists one digest per file: kilobytes, never megabytes
MAX_LISTED = 3  # files named in one error line beyond the first


@dataclass(frozen=True)
class SignatureCheck:
    key_sha256: str  # the trusted public key that verified it
    seconds: float  # model-signing's verification: the signature plus hashing every file
    files: list[str] = field(default_factory=list)
    statement_sha256: str = ""  # sha256 of the signed statement: the bundle's digest a trust setting can pin


def verify_bundle_signature(bundle: str | Path, public_key: str | Path) -> SignatureCheck:
    """Check `bundle`'s signature with the EC public key at `public_key` (PEM); SignatureError (one line naming
    the file at fault) when it is missing, unreadable, made with another key, or any file was changed, added or
    removed since signing."""
    library = model_signing()
    bundle, public_key = Path(bundle), Path(public_key)
    key = load_public_key(public_key)
    if not bundle.is_dir():
        raise ModelError("not a bundle folder" if bundle.exists() else "bundle folder not found", bundle)
    signature = bundle / SIGNATURE_FILE
    if not signature.exists() and not signature.is_symlink():
        raise not_signed(bundle)
    if signature.is_symlink() or not signature.is_file():
        raise SignatureError("not a regular file: a signed bundle holds plain files only", signature)
    if signature.stat().st_size > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"larger than {MAX_SIGNATURE_BYTES >> 20} MB: not a model-signing signature", signature)
    files = bundle_files(bundle)
    started = time.perf_counter()
    config = library.verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    try:
        # model-signing prints a warning on stdout for old-format signatures: stdout is classify's results
        with contextlib.redirect_stdout(sys.stderr):
            config.set_hashing_config(hashing_config()).verify(bundle, signature)
    except Exception as err:  # noqa: BLE001 - each of model-signing's failures becomes one line
        raise _explain(err, bundle, signature, public_key, key, files) from err
    seconds = time.perf_counter() - started
    _, payload = authentic_statement(signature.read_bytes(), key, public_key, signature)
    return SignatureCheck(fingerprint(key), seconds, files, hashlib.sha256(payload).hexdigest())


IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


def authentic_statement(raw: bytes, key, key_path: Path, where: Path) -> tuple[dict[str, str], bytes]:
    """(file name -> its signed sha256, the signed statement's payload) of a model-signing signature file's bytes,
    after checking its DSSE signature with the public `key` (ECDSA over the DSSE pre-authentication encoding, the
    hash the key's curve takes, as model-signing signs) and that it names that key. SignatureError when it does
    not verify."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        outer = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique)
        hint = outer["verificationMaterial"]["publicKey"]["hint"]
        envelope = outer["dsseEnvelope"]
        (entry,) = envelope["signatures"]
        payload, sig = _canonical_base64(envelope["payload"]), _canonical_base64(entry["sig"])
        payload_type = envelope["payloadType"]
    except (ValueError, KeyError, TypeError) as err:
        raise SignatureError(f"not a readable model-signing signature ({first_line(err)})", where) from err
    if hint != fingerprint(key):
        raise _other_key(key_path, key, where)
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise SignatureError(f"signs a {str(payload_type)[:40]!r} payload, not an in-toto statement", where)
    digest = {256: hashes.SHA256, 384: hashes.SHA384, 521: hashes.SHA512}[key.curve.key_size]()
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)
    try:
        key.verify(sig, pae, ec.ECDSA(digest))
    except InvalidSignature as err:
        raise _altered(key_path, where) from err
    try:
        statement = json.loads(payload, object_pairs_hook=_unique)
        if statement["_type"] != IN_TOTO_STATEMENT_TYPE:
            raise ValueError(f"statement type {str(statement['_type'])[:40]!r}")
        signed = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    except (ValueError, KeyError, TypeError) as err:
        raise SignatureError(f"not a readable model-signing statement ({first_line(err)})", where) from err
    problem = _not_ours(statement)
    if problem:
        raise SignatureError(problem, where)
    return signed, payload


def not_signed(bundle: Path) -> SignatureError:
    return SignatureError(f"not signed: the bundle has no {SIGNATURE_FILE} (sign it with `tumor-edge sign BUNDLE "
                          "--key PRIVATE.pem`)", bundle)


def _altered(key_path: Path, where: Path) -> SignatureError:
    return SignatureError(f"does not verify with {key_path}: the signature or the statement it signs was altered",
                          where)


def _other_key(key_path: Path, key, where: Path) -> SignatureError:
    return SignatureError(f"signed with another key than the trusted {key_path} (sha256 {fingerprint(key)[:16]}…)",
                          where)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def _canonical_base64(text: str) -> bytes:
    """The bytes of base64 as every encoder writes it. A decoder ignores the unused low bits of the last character
    before the padding, so one of those could be edited and the signature would still verify: an edited model.sig
    would pass as the same signature. Refused, so that editing any byte of a signed bundle's files fails."""
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("base64 not in canonical form (edited)")
    return data


def _not_ours(statement: dict[str, Any]) -> str | None:
    """Why a signed statement does not cover the bundle as tumor-edge signs it (None when it does)."""
    serialization = statement.get("predicate", {}).get("serialization", {})
    method, hash_type = serialization.get("method"), serialization.get("hash_type")
    if method != "files" or hash_type != "sha256":
        return (f"signed file by file with sha256 is what tumor-edge checks; this signature uses method {method!r}, "
                f"hash {hash_type!r}: sign the bundle with `tumor-edge sign`")
    left_out = sorted(set(serialization.get("ignore_paths") or []) - {SIGNATURE_FILE})
    if left_out:
        return (f"the signature leaves files out ({', '.join(left_out)}): a trusted bundle is signed whole; sign it "
                f"with `tumor-edge sign`")
    return None


def _explain(err: Exception, bundle: Path, signature: Path, public_key: Path, key, files: list[str]
             ) -> SignatureError:
    """model-signing's failure as one line naming the file at fault."""
    from cryptography.exceptions import InvalidSignature

    text = str(err)
    if isinstance(err, InvalidSignature):
        return _altered(public_key, signature)
    if isinstance(err, ValueError) and text.startswith("Key mismatch"):
        return _other_key(public_key, key, signature)
    if isinstance(err, ValueError) and text.startswith("Signature mismatch"):
        try:
            signed = authentic_statement(signature.read_bytes(), key, public_key, signature)[0]
        except OSError as read_err:
            return SignatureError(f"signature check failed ({first_line(err)}; {first_line(read_err)})", bundle)
        except SignatureError as refusal:  # not a statement tumor-edge makes, or not readable as one
            return refusal
        return _changed_files(bundle, signed, files) or SignatureError(
            f"signature check failed ({first_line(err)})", bundle)
    return SignatureError(f"not a readable model-signing signature ({first_line(err)})", signature)


def _changed_files(bundle: Path, signed: dict[str, str], files: list[str]) -> SignatureError | None:
    """The files whose content differs from their authentic `signed` sha256, that it does not list, or that it
    lists and the bundle lacks, as one line naming the first (None when there are none)."""
    problems: list[tuple[str, str]] = []
    for name in files:
        if name not in signed:
            problems.append((name, "not part of the signed bundle (added after signing)"))
        elif sha256_file(bundle / name) != signed[name]:
            problems.append((name, "changed since the bundle was signed (its sha256 is not the signed one)"))
    problems += [(name, "signed, but missing from the bundle") for name in sorted(set(signed) - set(files))]
    if not problems:
        return None
    (first, why), rest = problems[0], [name for name, _ in problems[1:]]
    more = f" (and {len(rest)} more: {', '.join(rest[:MAX_LISTED])}{', …' if len(rest) > MAX_LISTED else ''})" \
        if rest else ""
    return SignatureError(f"signature check failed: {why}{more}", bundle / first)
