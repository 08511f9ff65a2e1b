"""Points to a polynomial over the prime field GF(65521) and back: 16 bits per coefficient.

A commitment stores ``k`` points ``(x, y)`` (an index, a 16-bit value) as the ``k``
coefficients of the one polynomial of degree below ``k`` through them, so only
the values cost storage: the verifier evaluates it at indices it finds itself.
The prime is the largest below 2**16, so every coefficient fits in 16 bits and
every finite bfloat16 bit pattern (at most ``0xFF80``) is a field element.
Indices are first reduced modulo an *injective modulus*: the largest number not
above the prime under which the ``k`` indices stay distinct (stored with the
polynomial, two more bytes).

Interpolation is Newton's divided differences, then expansion to the monomial
basis; both are O(k**2) field operations with inverses from a table built once.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Final

__all__ = ["FIELD_PRIME", "evaluate", "injective_modulus", "interpolate"]

FIELD_PRIME: Final = 65521


@cache
def _inverses() -> tuple[int, ...]:
    """``inv[a] * a == 1 (mod p)`` for every nonzero ``a``, by the linear-time recurrence."""
    p = FIELD_PRIME
    inv = [0, 1]
    for a in range(2, p):
        inv.append((p - (p // a) * inv[p % a] % p) % p)
    return tuple(inv)


def injective_modulus(indices: Sequence[int]) -> int:
    """The largest ``m <= FIELD_PRIME`` under which ``indices`` stay pairwise distinct."""
    wanted = len(set(indices))
    if wanted != len(indices):
        raise ValueError("indices must be distinct")
    for m in range(FIELD_PRIME, wanted - 1, -1):
        if len({i % m for i in indices}) == wanted:
            return m
    raise ValueError("no injective modulus")  # unreachable: m = max index + 1 always works


def interpolate(xs: Sequence[int], ys: Sequence[int]) -> list[int]:
    """Coefficients ``c[0] + c[1] x + ...`` of the polynomial through ``(xs[i], ys[i])`` mod p.

    ``xs`` must be distinct field elements; ``ys`` are reduced mod p.
    """
    p = FIELD_PRIME
    n = len(xs)
    if n != len(ys) or n == 0:
        raise ValueError("need as many y as x values, at least one")
    if len({x % p for x in xs}) != n:
        raise ValueError("x values must be distinct modulo the field prime")
    inv = _inverses()
    x = [v % p for v in xs]
    newton = [v % p for v in ys]
    for step in range(1, n):  # divided differences of order ``step``, in place
        newton[step:] = [
            (newton[i] - newton[i - 1]) * inv[(x[i] - x[i - step]) % p] % p
            for i in range(step, n)
        ]
    # Horner on the Newton form: c_{n-1}, then poly * (X - x_j) + c_j for j = n-2 .. 0
    poly = [newton[-1]]
    for j in range(n - 2, -1, -1):
        shifted = [0, *poly]
        xj = x[j]
        poly = [(shifted[i] - xj * (poly[i] if i < len(poly) else 0)) % p
                for i in range(len(shifted))]
        poly[0] = (poly[0] + newton[j]) % p
    return poly


def evaluate(coefficients: Sequence[int], xs: Sequence[int]) -> list[int]:
    """The polynomial at each of ``xs`` (mod p), by Horner's rule."""
    p = FIELD_PRIME
    values = [0] * len(xs)
    points = [v % p for v in xs]
    for c in reversed(coefficients):
        values = [(v * x + c) % p for v, x in zip(values, points, strict=True)]
    return values
