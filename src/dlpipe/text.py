"""Names from the file system as text: a Linux file name is bytes, and os.fsdecode turns the bytes
that are not UTF-8 into lone surrogates (0xFF -> U+DCFF) that no UTF-8 writer accepts. No imports
beyond the standard library: the console, atomic writes and the data index all use it."""

from __future__ import annotations

import re

_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    # U+DC80..U+DCFF stand for the bytes 0x80..0xFF that os.fsdecode could not decode
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every lone surrogate written as an escape (`caf\\xe9.png` for the file name
    b"caf\\xe9.png"), so printing it, writing it to a UTF-8 file or to JSON never raises
    UnicodeEncodeError; valid text is returned unchanged."""
    return _SURROGATE.sub(_escape_surrogate, text) if _SURROGATE.search(text) else text
