"""Files named by policies: public keys (recipients_file, signers_file), secrets."""

from __future__ import annotations

from pathlib import Path

from drkit.errors import CryptoError


def read_text_file(path: Path) -> str:
    """The UTF-8 text of the file at ``path``. Raises OSError, or ValueError saying the
    file is not UTF-8 text and on which line (never the bytes: it may hold a secret)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"not UTF-8 text (line {line})") from None


def key_file_lines(name: str, path_text: str) -> list[tuple[int, str]]:
    """(line number, text) of each key line of the file at ``path_text`` (``~``
    expanded): blank lines and ``#`` comments skipped. Raises CryptoError naming
    ``name`` (e.g. "signers file") and the path when it cannot be read."""
    path = Path(path_text).expanduser()
    try:
        content = read_text_file(path)
    except OSError as exc:
        raise CryptoError(f"{name} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CryptoError(f"{name} {path}: {exc}") from None
    return [
        (n, line.strip())
        for n, line in enumerate(content.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
