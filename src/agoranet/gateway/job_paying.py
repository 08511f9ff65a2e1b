"""Paying fine-tuning jobs on paid nodes from the owner's wallet, within the caller's budget.

A node prices a job itself (its tokens, counted with the model's tokenizer, times its
epochs, at its training price): :meth:`JobPayments.start` first asks for the job
without payment, and the node's 402 names the job's maximum (the amount of its
``batch-settlement`` requirement, which is what the voucher will let it charge). That
maximum is reserved against the caller key's chain and the global budget (a 429 or a
402 ``insufficient_quota`` when it does not fit, and the node never gets the job), and
the job is asked for again, paid like the CLI's: through
:class:`~agoranet.payments.pay.httpx_auth.PayerAuth`, a voucher for exactly that maximum,
which the node holds until the job ends. The job is then a spend-log row (request id:
the job's id, the caller's key) with outcome ``held`` and amount 0.

A held voucher keeps its channel busy until the job ends, so each job is paid on a
channel of its own among the node's job channels (``<channels>/jobs/<node>/<n>``, reused
once their job has ended): never the channel the gateway's inference runs on. Each
channel folder holds a ``job.json`` while its job runs: the job's id, its payment's
request id, the maximum reserved and the key.

When the job has ended (:meth:`JobPayments.settle`, called by the status route, which
``fine_tune_status`` polls), the job's final receipt is checked and adopted
(:meth:`~agoranet.payments.pay.payer.Payer.settle_job`), the reservation is settled at the
receipted amount, and the spend row is rewritten (``ok``, the amount, the trained tokens,
the receipt). A receipt that fails its checks counts the whole maximum as spent, logged
``disputed``, and the node gets a dispute. Nothing settles a job nobody asks about: its
reservation stays held until someone does.

After a restart: a keyed gateway's key store settles the reservation of a job still held
**at its full maximum** when the gateway starts (as for any request in flight, see
:mod:`agoranet.gateway.keystore`; the ``lost`` row carries the payment's request id).
The job's channel stays reserved for it; when it ends, its receipt is still checked and
adopted, and its row becomes ``recovered`` (amount 0: the ``lost`` row already counts the
maximum), so the key keeps the unspent part of the maximum as spent. An open gateway
holds the maximum again in its global budget until the job is settled as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx

from agoranet.errors import AgoranetError, PaymentError, UpstreamError
from agoranet.gateway.budget import Budget, Reservation, Reserver
from agoranet.gateway.nodes import NodeState
from agoranet.gateway.paying import NodePayers
from agoranet.gateway.spendlog import SpendLog, SpendRow

if TYPE_CHECKING:
    from agoranet.payments.pay.payer import Payer

__all__ = ["JobPayments", "job_request_id"]

logger = logging.getLogger(__name__)

_RECORD: Final = "job.json"
_ENDED: Final = frozenset({"succeeded", "failed", "cancelled"})


def job_request_id() -> str:
    """A new payment request id for a job (also the key store's reservation id)."""
    return f"ft-{uuid.uuid4().hex}"


@dataclass
class _Record:
    """A paid job in training: what ``job.json`` keeps."""

    job_id: str | None  # None: the node's answer was lost, so the channel is never reused
    node: str
    model: str
    request_id: str  # the payment's (and the key store reservation's)
    amount: int  # the maximum reserved, which the voucher allows
    key: str | None
    keyed: bool
    started: float


@dataclass
class _Held:
    record: _Record
    folder: Path
    reservation: Reservation | None  # None: settled at its maximum by a restart's recovery


class JobPayments:
    """The gateway's paid fine-tuning jobs, their channels and their reservations."""

    def __init__(self, payers: NodePayers, budget: Budget, spend: SpendLog,
                 client: httpx.AsyncClient, timeout: httpx.Timeout) -> None:
        self.payers = payers
        self.budget = budget
        self.spend = spend
        self.client = client
        self.timeout = timeout
        self.root = payers.state_root / "jobs"
        self._payers: dict[Path, Payer] = {}
        self._busy: set[Path] = set()  # channel folders with a job (or one being started)
        self._held: dict[str, _Held] = {}  # by job id
        self._lock = asyncio.Lock()  # one channel opened at a time
        self._load()

    def _load(self) -> None:
        """The jobs a previous run left held (see the module's docstring)."""
        for path in sorted(self.root.glob(f"*/*/{_RECORD}")):
            try:
                record = _Record(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("fine-tuning job record %s is unreadable (%s): its channel is "
                               "not reused", path, exc)
                self._busy.add(path.parent)
                continue
            self._busy.add(path.parent)
            if record.job_id is None:
                continue
            reservation = None
            if not record.keyed:  # the key store settled a keyed one at its maximum
                self.budget.reserved += record.amount
                reservation = Reservation(self.budget, record.amount)
            self._held[record.job_id] = _Held(record, path.parent, reservation)

    @property
    def held(self) -> list[str]:
        """Ids of the jobs still held (reserved, not settled)."""
        return list(self._held)

    # ------------------------------------------------------------ starting a job

    async def start(self, node: NodeState, owner: str, job: dict[str, Any],
                    reserver: Callable[[str], Reserver], key: str | None, keyed: bool,
                    refused: Callable[[httpx.Response], Exception]) -> dict[str, Any]:
        """Create ``job`` on ``node`` paid, within the budget ``reserver(request_id)`` gives;
        the node's job object. ``refused`` turns a node's refusal into the buyer's error."""
        url = f"{node.url}/fine_tuning/jobs"
        headers = {"Authorization": f"Bearer {owner}"}
        quote = await self._post(node, url, json=job, headers=headers)
        if quote.status_code == 200:  # the node trains it for free after all
            return _object(node, quote)
        if quote.status_code != 402:
            raise refused(quote)
        amount = _maximum(node, quote)
        request_id = job_request_id()
        reservation = await reserver(request_id).reserve(amount)  # 429/402 before any voucher
        folder = None
        try:
            folder, payer = await self._channel(node)
            from agoranet.payments.pay.httpx_auth import PayerAuth, Payment

            payment = Payment(amount)  # what came of it: the node's hold
            reply = await self._post(
                node, url, json=job, headers={**headers, "x-request-id": request_id},
                auth=PayerAuth(payer).paying(payment))
        except UpstreamError:
            if folder is not None and _signed(self._payers.get(folder), request_id):
                # the voucher may have reached the node: the worst case counts, and the
                # channel, which a job may hold, is never reused
                self._lost(node, folder, request_id, job, amount, key, keyed, reservation)
            else:
                reservation.release(0)
                if folder is not None:
                    self._busy.discard(folder)
            raise
        except BaseException:
            reservation.release(0)  # refused before the voucher left (or by the node)
            if folder is not None:
                self._busy.discard(folder)
            raise
        if reply.status_code != 200 or payment.held is None:
            reservation.release(0)  # the node created nothing, or nothing it charges for
            self._busy.discard(folder)
            if reply.status_code != 200:
                raise refused(reply)
            return _object(node, reply)
        created = _object(node, reply)
        record = _Record(str(created.get("id")), node.url, str(job.get("model", "")),
                         request_id, amount, key, keyed, time.time())
        self._write(folder, record)
        self._held[record.job_id or ""] = _Held(record, folder, reservation)
        self.spend.add(SpendRow(record.job_id or "", record.model, node.url, 0, 0, 0, None,
                                0.0, "held", key=key))
        return created

    async def _post(self, node: NodeState, url: str, **kw: Any) -> httpx.Response:
        try:
            reply = await self.client.post(url, timeout=self.timeout, **kw)
            await reply.aread()
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the node {node.url} did not answer: "
                                f"{type(exc).__name__}") from exc
        except AgoranetError as exc:  # the payment flow: a bad hold, a channel that failed
            raise UpstreamError(f"paying the node {node.url} failed: {exc}") from exc
        return reply

    async def _channel(self, node: NodeState) -> tuple[Path, Payer]:
        """A job channel of ``node`` that no job holds (opened now if needed), marked busy."""
        async with self._lock:
            base = self.root / hashlib.sha256(node.url.encode()).hexdigest()[:16]
            number = 0
            while (base / str(number)) in self._busy:
                number += 1
            folder = base / str(number)
            self._busy.add(folder)
        try:
            return folder, await self._payer(node, folder)
        except BaseException:
            self._busy.discard(folder)
            raise

    async def _payer(self, node: NodeState, folder: Path) -> Payer:
        payer = self._payers.get(folder)
        if payer is None:
            try:
                payer = await asyncio.to_thread(self.payers.open_payer, node, folder)
            except AgoranetError as exc:
                raise UpstreamError(f"cannot open a channel to pay {node.url} for the job: "
                                    f"{exc}") from None
            self._payers[folder] = payer
        return payer

    def _lost(self, node: NodeState, folder: Path, request_id: str, job: dict[str, Any],
              amount: int, key: str | None, keyed: bool, reservation: Reservation) -> None:
        self._write(folder, _Record(None, node.url, str(job.get("model", "")), request_id,
                                    amount, key, keyed, time.time()))
        reservation.release(amount)
        self.spend.add(SpendRow(request_id, str(job.get("model", "")), node.url, 0, 0, amount,
                                None, 0.0, "failed", key=key))

    @staticmethod
    def _write(folder: Path, record: _Record) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / _RECORD
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(record)))
        temporary.replace(path)

    # ------------------------------------------------------------ settling a job

    async def settle(self, node: NodeState, job: dict[str, Any]) -> None:
        """If ``job`` (the node's job object, just read) is one this gateway pays and has
        ended with its charge made, check and adopt its receipt and settle its budget."""
        job_id = str(job.get("id"))
        held = self._held.get(job_id)
        if held is None or held.record.node != node.url:
            return
        extra = job.get("agoranet")
        payment = extra.get("payment") if isinstance(extra, dict) else None
        if job.get("status") not in _ENDED or not isinstance(payment, dict) \
                or payment.get("status") == "held":
            return
        payer = await self._payer(node, held.folder)
        if self._held.pop(job_id, None) is None:  # settled meanwhile by another request
            return
        record = held.record
        if record.request_id not in payer.held_jobs():
            payer.rehold(record.request_id)  # held before a restart
        outcome = "ok" if held.reservation is not None else "recovered"
        try:
            receipt = payer.settle_job(payment)
        except PaymentError as exc:  # a bad receipt: the whole maximum counts
            logger.warning("fine-tuning job %s on %s: %s", job_id, node.url, exc)
            node.record_dispute(f"fine-tuning job {job_id}: {exc}")
            charged, tokens, shown = record.amount, 0, None
            outcome = "disputed"
        else:
            charged = receipt.amount if receipt is not None else 0
            tokens = receipt.tokens_in if receipt is not None else 0
            shown = json.dumps(receipt.to_json()) if receipt is not None else None
        if held.reservation is not None:
            held.reservation.release(charged)
        logged = charged if held.reservation is not None else 0  # else: in its "lost" row
        self.spend.update(job_id, outcome, amount=logged, tokens=tokens,
                          duration_ms=(time.time() - record.started) * 1000, receipt=shown)
        with contextlib.suppress(OSError):
            (held.folder / _RECORD).unlink()
        self._busy.discard(held.folder)


def _signed(payer: Payer | None, request_id: str) -> bool:
    """Whether ``payer`` signed a voucher for ``request_id`` (saved before it leaves)."""
    return payer is not None and payer.state is not None and \
        request_id in payer.state.payments


def _object(node: NodeState, reply: httpx.Response) -> dict[str, Any]:
    try:
        answer = reply.json()
    except ValueError as exc:
        raise UpstreamError(f"the node {node.url} answered with no JSON") from exc
    if not isinstance(answer, dict):
        raise UpstreamError(f"the node {node.url} answered with no JSON object")
    return answer


def _maximum(node: NodeState, reply: httpx.Response) -> int:
    """The job's maximum from the node's 402: its ``batch-settlement`` requirement's amount
    (what the voucher will allow), never below the ``max_charge`` it states."""
    body = _object(node, reply)
    try:
        accepts = body["x402"]["accepts"]
        amount = max(int(a["amount"]) for a in accepts if a.get("scheme") == "batch-settlement")
        stated = int((body.get("agoranet") or {}).get("max_charge") or 0)
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamError(f"the node {node.url} asked to be paid for the job without "
                            "batch-settlement terms the gateway can read") from exc
    if amount <= 0 or stated > amount:
        raise UpstreamError(f"the node {node.url} priced the job inconsistently "
                            f"({amount}, max_charge {stated})")
    return amount
