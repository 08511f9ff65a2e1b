"""TOPLOC-style commitments to the last hidden state: build them, ship them, check them.

The scheme follows the TOPLOC paper (a locality-sensitive hash of activations);
this is our own implementation of it. The *last hidden state* is the final
decoder layer's output after its norm, what the LM head reads. A generation's
hidden rows are cut into chunks: the prompt's rows (the prefill), then the
rows of every ``chunk`` decode steps (a decode step feeds one generated token,
so an answer of ``n`` tokens has ``n - 1`` decode rows; the last token is
never fed). For each chunk, flattened, the ``k`` entries of largest magnitude
are committed to: their flat indices and the bfloat16 bits of their values
become points of one polynomial over GF(65521) (:mod:`.polynomial`), stored as
its ``k`` 16-bit coefficients after a 16-bit modulus: ``2 k + 2`` bytes.

A verifier recomputes the chunk with reference weights, takes *its own* top
``k`` indices, evaluates the committed polynomial there and compares with its
own values: an entry whose sign or exponent differs is a mismatch (an index the
node did not commit to evaluates to noise, so it counts as one too), and among
the others the mantissa difference (in units of the 7-bit bfloat16 mantissa)
is averaged. :class:`Thresholds` states when a chunk passes.
"""

from __future__ import annotations

import base64
import binascii
import math
import statistics
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import torch

from agoranet.errors import AuditError
from agoranet.proofs.polynomial import FIELD_PRIME, evaluate, injective_modulus, interpolate

__all__ = [
    "ALGORITHM",
    "CHUNK",
    "DEFAULT_THRESHOLDS",
    "LOOSE",
    "TOP_K",
    "ChunkCheck",
    "CommitmentBuilder",
    "Commitments",
    "Thresholds",
    "check_chunk",
    "chunks",
    "expected_proofs",
    "prove_chunk",
]

ALGORITHM: Final = "agoranet-toploc-v1"
CHUNK: Final = 32  # decode steps per commitment
TOP_K: Final = 128  # entries committed to per chunk: 258 bytes a proof


@dataclass(frozen=True, slots=True)
class Commitments:
    """A generation's proofs: the prefill's, then one per ``chunk`` decode steps."""

    proofs: tuple[bytes, ...]
    algorithm: str = ALGORITHM
    chunk: int = CHUNK
    k: int = TOP_K

    @property
    def size_bytes(self) -> int:
        return sum(len(p) for p in self.proofs)

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent under ``agoranet.commitments`` (proofs in base64)."""
        return {"algorithm": self.algorithm, "chunk": self.chunk, "k": self.k,
                "proofs": [base64.b64encode(p).decode("ascii") for p in self.proofs]}

    @classmethod
    def from_wire(cls, data: object) -> Commitments:
        """Parse what a node sent; :class:`AuditError` if it is not well formed."""
        if not isinstance(data, dict):
            raise AuditError("commitments must be a JSON object")
        try:
            algorithm, chunk, k, proofs = (data["algorithm"], data["chunk"], data["k"],
                                           data["proofs"])
            if not (isinstance(algorithm, str) and isinstance(chunk, int) and isinstance(k, int)
                    and isinstance(proofs, list) and chunk > 0 and k > 0):
                raise TypeError("wrong field types")
            raw = tuple(base64.b64decode(p, validate=True) for p in proofs)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise AuditError(f"malformed commitments: {exc}") from exc
        return cls(raw, algorithm, chunk, k)


def expected_proofs(completion_tokens: int, chunk: int = CHUNK) -> int:
    """How many proofs an answer of ``completion_tokens`` tokens carries."""
    return 1 + math.ceil(max(completion_tokens - 1, 0) / chunk)


def chunks(hidden: torch.Tensor, prompt_tokens: int, chunk: int = CHUNK) -> Iterator[torch.Tensor]:
    """The committed chunks of ``hidden`` (rows: prompt, then decode steps)."""
    yield hidden[:prompt_tokens]
    for start in range(prompt_tokens, hidden.shape[0], chunk):
        yield hidden[start : start + chunk]


def _bits(values: torch.Tensor) -> list[int]:
    """The bfloat16 bit patterns of ``values`` (rounded to nearest), as unsigned ints."""
    as_bf16 = values.detach().to(device="cpu", dtype=torch.bfloat16)
    return [b & 0xFFFF for b in as_bf16.view(torch.int16).tolist()]


def _top(rows: torch.Tensor, k: int) -> tuple[list[int], list[int]]:
    flat = rows.reshape(-1)
    indices = flat.abs().topk(min(k, flat.numel())).indices
    return indices.tolist(), _bits(flat[indices])


def prove_chunk(rows: torch.Tensor, k: int = TOP_K) -> bytes:
    """The proof of one chunk: modulus, then the polynomial's coefficients (uint16, LE)."""
    indices, values = _top(rows, k)
    modulus = injective_modulus(indices)
    coefficients = interpolate([i % modulus for i in indices], values)
    return struct.pack(f"<{len(coefficients) + 1}H", modulus, *coefficients)


def _decode(proof: bytes) -> tuple[int, list[int]] | None:
    if len(proof) < 4 or len(proof) % 2:
        return None
    modulus, *coefficients = struct.unpack(f"<{len(proof) // 2}H", proof)
    if not 0 < modulus <= FIELD_PRIME or any(c >= FIELD_PRIME for c in coefficients):
        return None
    return modulus, coefficients


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When one chunk passes: all three bounds hold.

    The defaults come from measurements on the tiny model (tests/verify and
    bench/commitments.py), float32 and bfloat16, across thread counts: an honest
    node shows at most 4 of 128 sign/exponent mismatches, a mean mantissa
    difference below 1 and a median of at most 1 (in 1/128 steps of the
    bfloat16 mantissa); int4-rounded weights show at least 8 mismatches, a mean
    above 4 and a median of at least 3. The bounds sit between the two, with
    the mean as the deciding one. :data:`LOOSE` holds the far wider bounds of a
    public SGLang integration of TOPLOC (90 of 128, 10, 8), meant for large
    bfloat16 models across GPU kinds; they do not catch int4 on the tiny model.
    """

    max_exponent_mismatch_share: float = 0.10
    max_mantissa_mean: float = 2.0
    max_mantissa_median: float = 2.0


DEFAULT_THRESHOLDS: Final = Thresholds()
LOOSE: Final = Thresholds(90 / 128, 10.0, 8.0)


@dataclass(frozen=True, slots=True)
class ChunkCheck:
    entries: int
    exponent_mismatches: int
    mantissa_mean: float
    mantissa_median: float
    passed: bool


def check_chunk(rows: torch.Tensor, proof: bytes, k: int = TOP_K,
                thresholds: Thresholds = DEFAULT_THRESHOLDS) -> ChunkCheck:
    """Compare a recomputed chunk with the node's proof of it."""
    indices, mine = _top(rows, k)
    decoded = _decode(proof)
    if decoded is None or len(decoded[1]) != len(indices):
        return ChunkCheck(len(indices), len(indices), math.inf, math.inf, False)
    modulus, coefficients = decoded
    theirs = evaluate(coefficients, [i % modulus for i in indices])
    errors = [abs((a & 0x7F) - (b & 0x7F)) for a, b in zip(mine, theirs, strict=True)
              if a >> 7 == b >> 7]
    mismatches = len(indices) - len(errors)
    mean = statistics.fmean(errors) if errors else math.inf
    median = float(statistics.median(errors)) if errors else math.inf
    passed = (mismatches <= thresholds.max_exponent_mismatch_share * len(indices)
              and mean <= thresholds.max_mantissa_mean
              and median <= thresholds.max_mantissa_median)
    return ChunkCheck(len(indices), mismatches, mean, median, passed)


class CommitmentBuilder:
    """Collects a generation's hidden rows on the node and proves each chunk once full."""

    def __init__(self, chunk: int = CHUNK, k: int = TOP_K) -> None:
        self.chunk = chunk
        self.k = k
        self._proofs: list[bytes] = []
        self._pending: list[torch.Tensor] = []
        self._rows = 0

    def add(self, hidden: torch.Tensor) -> None:
        """The last hidden rows of one forward pass ``[tokens, hidden]``: the prompt's first."""
        if not self._proofs:
            self._proofs.append(prove_chunk(hidden, self.k))
            return
        self._pending.append(hidden)
        self._rows += hidden.shape[0]
        while self._rows >= self.chunk:
            rows = torch.cat(self._pending)
            self._proofs.append(prove_chunk(rows[: self.chunk], self.k))
            rest = rows[self.chunk :]
            self._pending, self._rows = ([rest] if rest.shape[0] else []), rest.shape[0]

    def _flush(self) -> None:
        if self._pending:
            self._proofs.append(prove_chunk(torch.cat(self._pending), self.k))
            self._pending, self._rows = [], 0

    def finish(self) -> Commitments:
        """All proofs, the last (partial) chunk included."""
        self._flush()
        return Commitments(tuple(self._proofs), ALGORITHM, self.chunk, self.k)
