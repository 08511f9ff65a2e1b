"""Signed score lists: what one gateway found about nodes, for other buyers to read.

A list is a JSON object, signed like an offer (:mod:`agoranet.registry.signing`):
EIP-191 ``personal_sign`` by the gateway's wallet key over the canonical JSON
(sorted keys, no spaces) of the object without its ``signature`` field::

    {"format": "agoranet-reputation/1", "signer": "0x…", "issued_at": 1700000000,
     "entries": [{"node": "0x… or https://…/v1", "url": "https://…/v1",
                  "models": ["qwen2.5-0.5b-instruct"], "score": 0.8333,
                  "successes": 9, "failures": 1, "receipt_disagreements": 0,
                  "audits_passed": 2, "audits_failed": 0, "tokens_audited": 960,
                  "last_verdict": "passed: 0/10 answers flagged, 480 tokens",
                  "last_seen": 1700000000, "banned_until": 0, "ban_reason": null}],
     "signature": "0x…"}

Times are unix seconds; ``score`` is rounded to 4 decimals. Reading others'
lists is opt-in: :func:`check_list` refuses a list unless its signature recovers
its ``signer`` and that signer is one the owner trusts. What an imported list
does is stated in :mod:`agoranet.gateway.reputation` (a trusted signer's running
failed-audit ban bans the node here too); the rest of it is shown, not scored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from web3 import Web3

from agoranet.errors import ReputationListError
from agoranet.gateway.reputation import ImportedVerdict, NodeRecord, Reputation

__all__ = [
    "FORMAT",
    "ScoreEntry",
    "ScoreList",
    "build_list",
    "canonical_list",
    "check_list",
    "list_signer",
    "read_list",
    "sign_list",
    "verdicts",
]

FORMAT = "agoranet-reputation/1"


class ScoreEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node: str
    url: str
    models: list[str] = Field(default_factory=list)
    score: float = Field(ge=0, le=1)
    successes: int = Field(ge=0)
    failures: int = Field(ge=0)
    receipt_disagreements: int = Field(ge=0)
    audits_passed: int = Field(ge=0)
    audits_failed: int = Field(ge=0)
    tokens_audited: int = Field(ge=0)
    last_verdict: str | None = None
    last_seen: int = Field(ge=0)
    banned_until: int = Field(default=0, ge=0)
    ban_reason: str | None = None


class ScoreList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    signer: str | None = None
    issued_at: int = Field(ge=0)
    entries: list[ScoreEntry]
    signature: str | None = None


def _entry(record: NodeRecord, now: float) -> ScoreEntry:
    """A record as a list entry: this gateway's own findings (imported bans are not passed on)."""
    ban = record.ban()
    running = ban is not None and ban.until > now
    return ScoreEntry(
        node=record.node, url=record.url, models=list(record.models),
        score=round(record.score, 4), successes=record.successes,
        failures=record.failures + record.unauditable, receipt_disagreements=record.receipts,
        audits_passed=record.audits_passed, audits_failed=record.audits_failed,
        tokens_audited=record.tokens_audited, last_verdict=record.last_verdict,
        last_seen=int(record.last_seen),
        banned_until=int(ban.until) if ban is not None and running else 0,
        ban_reason=ban.reason if ban is not None and running else None)


def build_list(reputation: Reputation, issued_at: int | None = None) -> ScoreList:
    """The unsigned list of every node this gateway has a record of (its own findings)."""
    now = time.time()
    return ScoreList(issued_at=int(now) if issued_at is None else issued_at,
                     entries=[_entry(r, now) for r in reputation.records()])


def canonical_list(scores: ScoreList) -> bytes:
    data = scores.model_dump(mode="json", exclude={"signature"})
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def sign_list(scores: ScoreList, account: LocalAccount) -> ScoreList:
    unsigned = scores.model_copy(update={"signer": account.address, "signature": None})
    signed = account.sign_message(encode_defunct(canonical_list(unsigned)))
    return unsigned.model_copy(update={"signature": "0x" + bytes(signed.signature).hex()})


def list_signer(scores: ScoreList) -> str:
    """The address that signed ``scores``; ReputationListError if unsigned or tampered with."""
    if not scores.signature or not scores.signer:
        raise ReputationListError("the score list is not signed")
    try:
        recovered = Account.recover_message(encode_defunct(canonical_list(scores)),
                                            signature=scores.signature)
        claimed = Web3.to_checksum_address(scores.signer)
    except (ValueError, TypeError) as exc:
        raise ReputationListError(f"the score list's signature is malformed: {exc}") from exc
    if Web3.to_checksum_address(recovered) != claimed:
        raise ReputationListError(
            f"the score list's signature does not match its signer {scores.signer}: "
            "it was altered after signing, or signed by someone else")
    return claimed


def check_list(scores: ScoreList, trusted: Iterable[str]) -> str:
    """The list's signer, if its signature is good and the owner trusts that signer."""
    if scores.format != FORMAT:
        raise ReputationListError(f"unknown score list format {scores.format!r}; "
                                  f"expected {FORMAT!r}")
    signer = list_signer(scores)
    try:
        trust = {Web3.to_checksum_address(a) for a in trusted}
    except ValueError as exc:
        raise ReputationListError(f"a trusted signer is not an address: {exc}") from exc
    if not trust:
        raise ReputationListError(f"the list is signed by {signer}; reading others' lists is "
                                  "opt-in: name the signers you trust (--trust ADDRESS)")
    if signer not in trust:
        raise ReputationListError(f"the list is signed by {signer}, which is not a signer you "
                                  "trust (--trust ADDRESS)")
    return signer


def read_list(path: Path) -> ScoreList:
    try:
        return ScoreList.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ReputationListError(f"cannot read score list {path}: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the file"
        raise ReputationListError(f"{path} is not a score list ({where}: {first['msg']})") from exc


def verdicts(scores: ScoreList, signer: str) -> list[ImportedVerdict]:
    """What a checked list says, node by node, for the reputation store."""
    return [ImportedVerdict(signer, e.node, e.url, e.audits_failed, float(e.banned_until),
                            e.ban_reason or f"failed {e.audits_failed} audit(s)",
                            e.model_dump(mode="json"))
            for e in scores.entries]
