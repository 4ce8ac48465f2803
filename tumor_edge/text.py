"""The one rule for showing text that others chose (file names, class names, paths) on a terminal, in a log line
or in a CSV cell: it stays one line and shows what is really there.

C0 and C1 controls, line separators and bidirectional controls (U+202E shows `scan<U+202E>gpj.exe` as
`scanexe.jpg`) act instead of showing: each becomes a visible backslash escape, as do undecodable file-name bytes.
"""

from __future__ import annotations

import os

_BIDI = (0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_ESCAPES = ({c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}
            | {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
            | {c: f"\\u{c:04x}" for c in (*_BIDI, 0x2028, 0x2029)})


def valid_unicode(text: str | None) -> str:
    """Text that encodes as UTF-8: undecodable file-name bytes become `\\xNN`; None (an in-memory image) becomes
    `<array>`."""
    if text is None:
        return "<array>"
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file-name decoding makes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: object) -> str:
    """`text` (a str, a path, None) for a terminal, a log line or a CSV cell: valid UTF-8, every control
    character escaped (see the module's docstring)."""
    return valid_unicode(None if text is None else str(text)).translate(_ESCAPES)
