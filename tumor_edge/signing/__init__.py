"""Signed bundles: every file of a bundle signed with a key, in the OpenSSF model-signing format.

`tumor-edge sign BUNDLE --key PRIVATE.pem` writes BUNDLE/model.sig; `verify`, `classify` and `serve` with
`--trust PUBLIC.pem` (or $TUMOR_EDGE_TRUST) refuse a bundle whose signature is missing or does not cover exactly
the files it holds. The format is model-signing's (a Sigstore bundle holding a DSSE-signed in-toto statement that
lists each file's sha256), so the OpenSSF tools can check a tumor-edge signature too:
`model_signing verify key BUNDLE --signature BUNDLE/model.sig --public_key PUBLIC.pem`.

This module imports nothing heavy: the runtime and export read the names below without paying for the
`model-signing` library (about 35 packages, the `sign` extra), which loads only when a signature is made or
checked; its two errors live in tumor_edge.errors, so importing this module runs no code.
"""

from __future__ import annotations

from tumor_edge.errors import SignatureError, TrustSettingError  # signing's errors, kept with the family

# The one file of a signed bundle that is not itself signed (a signature cannot cover itself) and that metadata
# does not list; the runtime's "only listed files" rule must let it be, by this name. model-signing's own default
# name, so its command-line tool finds it without being told.
SIGNATURE_FILE = "model.sig"
# A public key every `--trust` option falls back to: set once on a device, every run there is checked.
TRUST_ENV = "TUMOR_EDGE_TRUST"
# A private key's password, for `sign` and `export --sign-key` (kept off the command line and the process list).
KEY_PASSWORD_ENV = "TUMOR_EDGE_SIGN_PASSWORD"
# The extra that brings model-signing (and pyOpenSSL, which it imports without declaring it).
EXTRA = "sign"

__all__ = ["EXTRA", "KEY_PASSWORD_ENV", "SIGNATURE_FILE", "TRUST_ENV", "SignatureError", "TrustSettingError"]
