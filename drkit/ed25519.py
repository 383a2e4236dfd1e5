"""Ed25519 signing in pure Python (RFC 8032, section 5.1.6), for the backup path.

A backup signs one manifest per snapshot; importing the `cryptography` package
for that costs ~5 MiB of peak RSS (measured: bench/backup_rss.py), more than
the whole signing feature may. Signing here takes a few milliseconds. Ed25519
signatures are deterministic, so tests check that this code signs exactly as
`cryptography` does; verification (restore, status, prune) uses `cryptography`.
"""

from __future__ import annotations

import hashlib

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_GY = 4 * pow(5, _P - 2, _P) % _P

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    if x & 1 != sign:
        x = _P - x
    return x


_GX = _recover_x(_GY, 0)
_BASE: Point = (_GX, _GY, 1, _GX * _GY % _P)


def _add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(scalar: int, p: Point) -> Point:
    q: Point = (0, 1, 1, 0)  # the neutral element
    while scalar:
        if scalar & 1:
            q = _add(q, p)
        p = _add(p, p)
        scalar >>= 1
    return q


def _encode(p: Point) -> bytes:
    zinv = pow(p[2], _P - 2, _P)
    x, y = p[0] * zinv % _P, p[1] * zinv % _P
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")


def _secret(seed: bytes) -> tuple[int, bytes]:
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte private seed."""
    a, _prefix = _secret(seed)
    return _encode(_mul(a, _BASE))


def sign(seed: bytes, public: bytes, message: bytes) -> bytes:
    """The 64-byte signature of ``message`` by the key ``seed`` (whose public key is
    ``public``, as the key file holds it)."""
    a, prefix = _secret(seed)
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % _L
    big_r = _encode(_mul(r, _BASE))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % _L
    s = (r + k * a) % _L
    return big_r + int.to_bytes(s, 32, "little")
