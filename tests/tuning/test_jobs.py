"""Fine-tuning jobs: priced before they run, charged what they trained, kept across restarts.

The money side is the node's real ledger (SQLite) and acceptor, with a hold made
the way an accepted voucher makes one; the trainer is a fake that steps through
``progress`` (and can be held at a step), except in the test with the real
trainer and tokenizer on the tiny model.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agoranet.errors import InvalidRequestError, ModelNotFoundError, TuningError
from agoranet.market import TokenPrices, cost, training_cost
from agoranet.node.job_payments import JobPayments
from agoranet.payments.accept.acceptor import Authorization, PaymentAcceptor, PaymentTerms
from agoranet.payments.accept.sqlite_ledger import SqliteLedger
from agoranet.payments.accept.verifier import OnchainState
from agoranet.payments.receipts import Receipt, ReceiptSigner, verify_receipt
from agoranet.tuning.config import TuneConfig
from agoranet.tuning.data import Example
from agoranet.tuning.housestyle import write_house_style
from agoranet.tuning.jobs import ENDED, FineTuneJob, JobManager
from agoranet.tuning.lora import TuneReport
from agoranet.tuning.sizing import TrainingSize

PRICE = 3_000_000  # base units per million training tokens: 3 per token
SIZE = TrainingSize(tokens=1_001, epochs=7, steps=20)  # 3003 base units in all
NODE_KEY = "0x" + "42" * 32
PAYER = Account.from_key("0x" + "43" * 32).address
CHANNEL = "0x" + "ab" * 32
DATA = (b'{"messages": [{"role": "user", "content": "Hi"}, '
        b'{"role": "assistant", "content": "Ahoy!"}]}\n')


class FakeTrainer:
    """Steps through ``progress``; ``hold_at`` stops it there until ``go`` is set."""

    def __init__(self, hold_at: int | None = None, fail_at: int | None = None) -> None:
        self.hold_at, self.fail_at = hold_at, fail_at
        self.at_hold = threading.Event()
        self.go = threading.Event()
        self.forever = False

    def __call__(self, examples: list[Example], out: Path, config: TuneConfig, sha: str,
                 progress: Callable[[int, int, float], None]) -> TuneReport:
        for step in range(1, SIZE.steps + 1):
            if step == self.fail_at:
                raise TuningError("the trainer broke")
            progress(step, SIZE.steps, 1.0 / step)
            if step == self.hold_at:
                self.at_hold.set()
                self.go.wait()
                while self.forever:  # a "killed" process: never comes back
                    time.sleep(3600)
        out.mkdir(parents=True, exist_ok=True)
        return TuneReport(out, "cd" * 32, "tiny", 1, 0, SIZE.tokens, SIZE.steps, 0.1, None,
                          None, 0.0)


def sizer(examples: list[Example], config: TuneConfig) -> TrainingSize:
    return SIZE


class Node:
    """A node's ledger, acceptor and fine-tuning, on files in ``root``."""

    def __init__(self, root: Path, trainer: FakeTrainer) -> None:
        self.root = root
        self.ledger = SqliteLedger(root / "ledger.sqlite")
        self.ledger.recover()  # as a node's start-up does
        signer = ReceiptSigner(NODE_KEY)
        self.node = signer.address
        terms = PaymentTerms(chain_id=31337, asset="0x" + "22" * 20, pay_to=self.node,
                             receiver_authorizer=self.node, token_name="USD Coin",
                             token_version="2")
        self.acceptor = PaymentAcceptor(terms, self.ledger, None, signer)  # type: ignore[arg-type]
        self.payments = JobPayments(self.acceptor, PRICE)
        self.jobs = JobManager("tiny", root / "tuning", trainer, sizer, price_per_million=PRICE)
        self.jobs.start(self.payments)

    def pay(self, request_id: str, amount: int) -> dict[str, Any]:
        """Hold a voucher for ``amount`` as an accepted x402 payment does; the payment record."""
        self.ledger.ensure_channel(CHANNEL, "{}", PAYER, 0)
        charged = self.ledger.channel(CHANNEL).charged  # type: ignore[union-attr]
        hold = self.ledger.accept_voucher(request_id, CHANNEL, charged + amount, "0x01", amount)
        auth = Authorization("batch-settlement", request_id, PAYER, amount,
                             self.acceptor.terms.requirement("batch-settlement", amount),
                             hold=hold, state=OnchainState(10**9, 0, 0, 0, 0.0))
        with self.payments._lock:
            self.payments._auths[request_id] = auth
        return self.payments.held(auth)

    def create(self, request_id: str = "req-1") -> FineTuneJob:
        stored = self.jobs.add_file("owner", "data.jsonl", DATA, "fine-tune")
        plan = self.jobs.plan("owner", "tiny", stored.id, {"n_epochs": 7}, 1)
        return self.jobs.create_job(plan, self.pay(request_id, plan.amount))

    def receipts(self) -> list[Receipt]:
        return self.ledger.receipts()

    def close(self) -> None:
        self.jobs.close()
        self.ledger.close()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[FakeTrainer], Node]]:
    made: list[Node] = []

    def make(trainer: FakeTrainer) -> Node:
        made.append(Node(tmp_path, trainer))
        return made[-1]

    yield make
    for node in made:
        with contextlib.suppress(Exception):  # a node left "killed" in a test
            node.close()


def wait_ended(job: FineTuneJob) -> None:
    deadline = time.monotonic() + 20
    while job.status not in ENDED:
        assert time.monotonic() < deadline, job.status
        time.sleep(0.01)
    assert job.charged is not None  # an ended job shows what it was charged


def receipt_of(job: FineTuneJob, node: str) -> Receipt:
    assert job.payment is not None and job.payment["status"] == "charged"
    receipt = Receipt.from_json(job.payment["response"]["extra"]["receipt"])
    verify_receipt(receipt, node)
    assert int(job.payment["response"]["extra"]["chargedAmount"]) == receipt.amount
    return receipt


def assert_money(node: Node, job: FineTuneJob) -> None:
    """The ledger and the job agree; nothing above the job's maximum; the hold is gone."""
    ledger = node.receipts()
    assert sum(r.amount for r in ledger) == (job.charged or 0)
    assert (job.charged or 0) <= job.max_charge
    channel = node.ledger.channel(CHANNEL)
    assert channel is not None and channel.pending_request is None
    assert channel.charged == sum(r.amount for r in ledger)


def test_plan_prices_the_whole_training_and_refuses_bad_requests(nodes: Any) -> None:
    node: Node = nodes(FakeTrainer())
    stored = node.jobs.add_file("owner", "data.jsonl", DATA, "fine-tune")
    plan = node.jobs.plan("owner", "tiny", stored.id, {"n_epochs": 7}, 1)
    assert plan.size == SIZE and plan.amount == 3003 == training_cost(SIZE.tokens, PRICE)
    with pytest.raises(ModelNotFoundError):
        node.jobs.plan("owner", "other", stored.id, {}, None)
    with pytest.raises(ModelNotFoundError):  # someone else's file
        node.jobs.plan("stranger", "tiny", stored.id, {}, None)
    with pytest.raises(TuningError, match="unsupported hyperparameters"):
        node.jobs.plan("owner", "tiny", stored.id, {"beta": 1}, None)
    with pytest.raises(InvalidRequestError):
        node.jobs.plan("owner", "tiny", stored.id, {}, "7")


def test_paid_job_is_charged_exactly_its_training_with_running_receipts_on_the_way(
        nodes: Any) -> None:
    trainer = FakeTrainer(hold_at=13)
    node: Node = nodes(trainer)
    job = node.create()
    assert trainer.at_hold.wait(10)
    # Mid-training the buyer sees a running receipt for the steps trained so far.
    running = Receipt.from_json(job.payment["response"]["extra"]["receipt"])  # type: ignore[index]
    verify_receipt(running, node.node)
    assert running.tokens_in == SIZE.tokens_after(12)
    assert running.amount == cost(TokenPrices(PRICE, 0), running.tokens_in, 0)
    assert job.payment["status"] == "held" and node.receipts() == []  # type: ignore[index]
    trainer.go.set()
    wait_ended(job)
    assert job.status == "succeeded" and job.fine_tuned_model == "tiny@adapter:" + "cd" * 32
    receipt = receipt_of(job, node.node)
    assert (receipt.tokens_in, receipt.tokens_out) == (SIZE.tokens, 0)
    assert receipt.amount == job.charged == job.max_charge == 3003
    assert [r.request_id for r in node.receipts()] == ["req-1"]
    assert_money(node, job)


def test_an_ended_job_is_shown_only_with_its_charge_but_is_on_disk_before_it(
        nodes: Any) -> None:
    node: Node = nodes(FakeTrainer())
    charging, go = threading.Event(), threading.Event()
    charge = node.payments.charge

    def slow_charge(job: FineTuneJob, tokens: int) -> dict[str, Any]:
        charging.set()
        assert go.wait(10)
        return charge(job, tokens)

    node.payments.charge = slow_charge  # type: ignore[method-assign]
    job = node.create()
    assert charging.wait(10)
    # While the charge is being made, a reader still sees the job running, never
    # "succeeded" without a charge; on disk the final status is already written.
    seen = node.jobs.get_job("owner", job.id)
    assert (seen.status, seen.charged) == ("running", None)
    on_disk = {r["id"]: r for r in node.jobs._db.jobs()}[job.id]
    assert on_disk["status"] == "succeeded" and on_disk["charged"] is None
    go.set()
    wait_ended(job)
    assert (job.status, job.charged) == ("succeeded", 3003)
    assert {r["id"]: r for r in node.jobs._db.jobs()}[job.id]["charged"] == 3003
    assert_money(node, job)


def test_cancelled_job_is_charged_the_steps_it_trained(nodes: Any) -> None:
    trainer = FakeTrainer(hold_at=5)
    node: Node = nodes(trainer)
    job = node.create()
    assert trainer.at_hold.wait(10)
    node.jobs.cancel("owner", job.id)
    trainer.go.set()
    wait_ended(job)
    # step 6 was done when the trainer next reported, and saw the cancellation
    assert job.status == "cancelled" and job.trained_steps == 6
    receipt = receipt_of(job, node.node)
    assert receipt.tokens_in == SIZE.tokens_after(6) == 300
    assert receipt.amount == job.charged == 900 < job.max_charge
    assert_money(node, job)
    with pytest.raises(TuningError, match="already ended"):
        node.jobs.cancel("owner", job.id)


def test_queued_job_cancelled_gets_a_zero_receipt(nodes: Any) -> None:
    trainer = FakeTrainer(hold_at=1)
    node: Node = nodes(trainer)
    stored = node.jobs.add_file("owner", "data.jsonl", DATA, "fine-tune")
    plan = node.jobs.plan("owner", "tiny", stored.id, {}, None)
    blocker = node.jobs.create_job(plan)  # unpaid; holds the worker: ours waits in the queue
    assert trainer.at_hold.wait(10)
    job = node.jobs.create_job(plan, node.pay("req-q", plan.amount))
    assert job.status == "queued"
    node.jobs.cancel("owner", job.id)
    assert job.status == "cancelled" and job.charged == 0
    assert receipt_of(job, node.node).amount == 0
    trainer.go.set()
    wait_ended(blocker)
    assert blocker.charged == 0 and blocker.payment is None
    assert_money(node, job)


def test_failed_job_pays_its_last_running_receipt_only(nodes: Any) -> None:
    node: Node = nodes(FakeTrainer(fail_at=9))
    job = node.create()
    wait_ended(job)
    assert job.status == "failed" and job.error and job.error["code"] == "invalid_training_file"
    receipt = receipt_of(job, node.node)  # the running receipt sent after step 8
    assert receipt.tokens_in == SIZE.tokens_after(8)
    assert job.charged == receipt.amount < job.max_charge
    assert_money(node, job)


def test_restart_fails_the_running_job_and_charges_only_what_was_receipted(
        nodes: Any) -> None:
    trainer = FakeTrainer(hold_at=7)
    trainer.forever = True
    old: Node = nodes(trainer)
    job = old.create()
    assert trainer.at_hold.wait(10)
    seen = Receipt.from_json(job.payment["response"]["extra"]["receipt"])  # type: ignore[index]
    trainer.go.set()  # the old process is "killed": its worker never comes back
    # A new process on the same files: the ledger releases the hold, the job fails.
    new: Node = nodes(FakeTrainer())
    again = new.jobs.get_job("owner", job.id)
    assert again.status == "failed" and again.error is not None
    assert again.error["code"] == "node_restarted"
    receipt = receipt_of(again, new.node)
    assert receipt == seen and again.charged == seen.amount < again.max_charge
    assert any("restarted" in e.message for e in again.events)
    assert_money(new, again)
    assert new.jobs.list_jobs("owner") == [again]


def test_graceful_stop_fails_the_running_job_at_its_last_running_receipt(
        nodes: Any) -> None:
    trainer = FakeTrainer(hold_at=7)
    node: Node = nodes(trainer)
    job = node.create()
    assert trainer.at_hold.wait(10)
    seen = Receipt.from_json(job.payment["response"]["extra"]["receipt"])  # type: ignore[index]
    stopping = threading.Thread(target=node.jobs.close)
    stopping.start()
    while not node.jobs._closing.is_set():
        time.sleep(0.001)
    trainer.go.set()
    stopping.join(10)
    assert job.status == "failed" and job.error is not None
    assert job.error["code"] == "node_stopped"
    assert receipt_of(job, node.node) == seen and job.charged == seen.amount
    assert_money(node, job)


def test_restart_keeps_finished_jobs_listable_and_releases_an_unreceipted_job(
        nodes: Any, tmp_path: Path) -> None:
    trainer = FakeTrainer()
    node: Node = nodes(trainer)
    done = node.create("req-done")
    wait_ended(done)
    node.jobs.close()
    node.ledger.close()
    # A job created (hold persisted) whose process died before its first receipt.
    stuck_trainer = FakeTrainer(hold_at=1)
    stuck_trainer.forever = True
    stuck_node: Node = nodes(stuck_trainer)
    stuck = stuck_node.create("req-stuck")
    assert stuck_trainer.at_hold.wait(10)
    stuck_trainer.go.set()
    assert stuck.payment is not None and stuck.payment["response"] is None  # no receipt yet
    new: Node = nodes(FakeTrainer())
    listed = {j.id: j for j in new.jobs.list_jobs("owner")}
    assert listed[done.id].status == "succeeded" and listed[done.id].charged == 3003
    assert listed[done.id].fine_tuned_model == done.fine_tuned_model
    assert len(listed[done.id].events) == len(done.events)
    gone = listed[stuck.id]
    assert gone.status == "failed" and gone.charged == 0
    assert gone.payment is not None and gone.payment["status"] == "released"
    assert [r.request_id for r in new.receipts()] == ["req-done"]
    assert new.jobs.get_file("owner", done.training_file).bytes == len(DATA)
    assert gone.payment["max_amount"] == "3003"


def test_real_trainer_trains_exactly_the_counted_tokens(tiny_model: Path, tiny_loaded: Any,
                                                        tmp_path: Path) -> None:
    from agoranet.tuning.jobs import local_trainer
    from agoranet.tuning.sizing import local_sizer

    data = write_house_style(tmp_path / "style.jsonl").read_bytes()
    jobs = JobManager("tiny", tmp_path / "tuning", local_trainer(tiny_model),
                      local_sizer(tiny_model, tiny_loaded.info.context_length), price_per_million=PRICE)
    jobs.start()
    try:
        stored = jobs.add_file("me", "style.jsonl", data, "fine-tune")
        plan = jobs.plan("me", "tiny", stored.id, {"n_epochs": 2}, 0)
        job = jobs.create_job(plan)
        wait_ended(job)
        assert job.status == "succeeded", job.error
        assert job.trained_tokens == plan.size.tokens > 0
        assert job.trained_steps == plan.size.steps
    finally:
        jobs.close()
    again = JobManager("tiny", tmp_path / "tuning", local_trainer(tiny_model),
                       local_sizer(tiny_model, tiny_loaded.info.context_length))
    again.start()
    try:
        assert again.adapter_archive("me", job.id)  # the adapter survives a restart
    finally:
        again.close()
