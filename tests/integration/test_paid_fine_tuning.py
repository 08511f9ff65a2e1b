"""Paid fine-tuning on real processes: a dev chain, a paid node, the official openai client.

The buyer pays through :class:`~agoranet.payments.pay.httpx_auth.PayerAuth` plugged into
the ``openai`` client: a job without payment is a 402 and no job; a paid job holds
its voucher until it ends and is charged what it trained, in a signed receipt the
buyer checks and adopts; a cancelled job costs at most what it trained; a node
killed mid-job comes back with the job failed and charged only what was receipted.
After each scenario the chain is checked: what the node claims equals its receipts
and the buyer's receipts, and nothing was lost or overcharged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from openai import OpenAI

from agoranet.chain.addresses import ChainAddresses, resolve_addresses
from agoranet.chain.devchain import DevChain
from agoranet.chain.rpc import connect
from agoranet.config import ChainSettings
from agoranet.market import TokenPrices, cost
from agoranet.payments.channels import read_channel
from agoranet.payments.pay.httpx_auth import PayerAuth
from agoranet.payments.pay.payer import Payer
from agoranet.payments.receipts import Receipt, verify_receipt
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore, fund_dev
from agoranet.tuning.housestyle import write_house_style
from helpers import wait_until
from integration.node_process import NodeProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PASSWORD = "tune-Password-5e1"
PRICE_TRAINING = 3_000_000  # 3 base units per training token
DEPOSIT = 5_000_000
ENDED = ("succeeded", "failed", "cancelled")


class Node(NodeProcess):
    """A paid ``agoranet node`` on a fixed port and its own state, which may be SIGKILLed."""

    def __init__(self, dev: DevChain, model: Path, tmp: Path, key_index: int) -> None:
        self.account: LocalAccount = Account.from_key(dev.private_keys[key_index])
        keystore = tmp / "node-key.json"
        create_keystore(keystore, PASSWORD, private_key=bytes(self.account.key), scrypt_n=2**10)
        self.ledger = tmp / "ledger.sqlite"
        super().__init__(
            ["--model", str(model), "--price-in", "1000000", "--price-out", "3000000",
             "--price-training", str(PRICE_TRAINING), "--rpc-url", dev.rpc_url,
             "--keystore", str(keystore), "--ledger", str(self.ledger), "--no-adapters",
             "--settle-interval", "0.2", "--chain-state-ttl", "1"], tmp / "node.log",
            env={PASSWORD_ENV_VAR: PASSWORD,
                 "AGORANET_NODE_FINE_TUNING_DIR": str(tmp / "tuning")})

    def receipts_total(self) -> int:
        import sqlite3

        db = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COALESCE(SUM(amount), 0) FROM receipts").fetchone()[0])
        finally:
            db.close()


@pytest.fixture(scope="module")
def addresses(chain: DevChain) -> ChainAddresses:
    return resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))


@pytest.fixture(scope="module")
def node(chain: DevChain, tiny_model: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    running = Node(chain, tiny_model, tmp_path_factory.mktemp("paid-tuning"), 7)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def payer(chain: DevChain, addresses: ChainAddresses, node: Node,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Payer]:
    w3 = connect(chain.rpc_url)
    account: LocalAccount = Account.create()
    fund_dev(w3, addresses, account.address, stablecoin=10 * DEPOSIT, native=10**18)
    paying = Payer(node.url, w3, addresses, account=account,
                   state_dir=tmp_path_factory.mktemp("payer"), max_per_request=2_000)
    paying.open(DEPOSIT)
    yield paying
    paying.close()


@pytest.fixture(scope="module")
def training_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_house_style(tmp_path_factory.mktemp("data") / "style.jsonl")


def paid_client(node: Node, payer: Payer) -> OpenAI:
    http = httpx.Client(auth=PayerAuth(payer), timeout=60.0)
    return OpenAI(base_url=f"{node.url}/v1", api_key="owner-secret", http_client=http,
                  max_retries=0)


def agoranet_of(job: Any) -> dict[str, Any]:
    extra: dict[str, Any] = job.model_extra["agoranet"]
    return extra


def wait(client: OpenAI, job_id: str, until: Any, timeout: float = 240.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def training_cost(tokens: int) -> int:
    return cost(TokenPrices(PRICE_TRAINING, 0), tokens, 0)


def settle(payer: Payer, job: Any, node: Node) -> Receipt | None:
    """The buyer checks and adopts the job's final receipt (None if nothing was charged)."""
    info = agoranet_of(job)
    receipt = payer.settle_job(info["payment"])
    if receipt is not None:
        verify_receipt(receipt, node.account.address)
        assert receipt.amount == info["charged"] <= info["max_charge"]
        assert receipt.amount == training_cost(receipt.tokens_in)
    else:
        assert info["charged"] == 0
    return receipt


def check_money(payer: Payer, node: Node) -> None:
    """Buyer and node agree on every charge, and the channel never held more than deposited.
    A plain answer is charged once its body has gone out, so the node's row for the last
    one may come just after the buyer has read it (on a busy machine)."""
    assert payer.state is not None
    mine = sum(r.amount for r in payer.receipts())
    wait_until(lambda: node.receipts_total() >= mine, "the node's charge of the last answer",
               timeout=10, every=0.05)
    assert mine == payer.state.charged == node.receipts_total()
    assert payer.state.charged <= DEPOSIT


def test_unpaid_job_is_a_402_and_creates_nothing(node: Node, training_file: Path) -> None:
    client = OpenAI(base_url=f"{node.url}/v1", api_key="owner-secret", max_retries=0)
    with training_file.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")  # uploads are free
    with pytest.raises(openai.APIStatusError) as refused:
        client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                       hyperparameters={"n_epochs": 2})
    assert refused.value.status_code == 402
    body = refused.value.response.json()
    tokens = body["agoranet"]["training_tokens"]
    assert tokens > 0 and body["agoranet"]["max_charge"] == training_cost(tokens)
    accepts = body["x402"]["accepts"]
    assert [a["scheme"] for a in accepts] == ["batch-settlement"]
    assert int(accepts[0]["amount"]) == training_cost(tokens)
    assert refused.value.response.headers.get("payment-required")
    assert client.fine_tuning.jobs.list().data == []
    # a request the node cannot price is a 400, never a 402 or a 500
    with pytest.raises(openai.BadRequestError, match="supervised"):
        client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                       method={"type": "dpo"})  # type: ignore[typeddict-item]


def test_paid_job_is_charged_its_training_then_the_channel_serves_again(
        node: Node, payer: Payer, training_file: Path) -> None:
    client = paid_client(node, payer)
    with training_file.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                         hyperparameters={"n_epochs": 2}, seed=1)
    info = agoranet_of(job)
    assert info["payment"]["status"] in ("held", "charged")
    assert payer.held_jobs() == [info["payment"]["request_id"]]
    assert info["max_charge"] == training_cost(info["training_tokens"])
    job = wait(client, job.id, lambda j: j.status in ENDED
               and agoranet_of(j)["payment"]["status"] != "held")
    assert job.status == "succeeded", job.error
    receipt = settle(payer, job, node)
    assert receipt is not None and receipt.tokens_in == job.trained_tokens
    assert receipt.amount == agoranet_of(job)["max_charge"]  # trained to the end: the whole
    assert payer.held_jobs() == []
    # the receipt endpoint shows the same payment
    shown = client.get(f"/fine_tuning/jobs/{job.id}/receipt", cast_to=httpx.Response)
    assert shown.json()["payment"] == agoranet_of(job)["payment"]
    # the channel is free again: a paid chat on it, receipted in step
    reply = client.chat.completions.create(model="tiny", max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "Hi!"}])
    assert reply.choices
    check_money(payer, node)


def test_cancelled_job_is_charged_at_most_what_it_trained(
        node: Node, payer: Payer, training_file: Path) -> None:
    client = paid_client(node, payer)
    with training_file.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                         hyperparameters={"n_epochs": 60})
    wait(client, job.id, lambda j: agoranet_of(j)["payment"]["response"] is not None
         or j.status in ENDED)
    client.fine_tuning.jobs.cancel(job.id)
    job = wait(client, job.id, lambda j: j.status in ENDED
               and agoranet_of(j)["payment"]["status"] != "held")
    assert job.status == "cancelled"
    info = agoranet_of(job)
    receipt = settle(payer, job, node)
    assert receipt is not None
    assert 0 < info["trained_steps"] < info["total_steps"]
    assert receipt.tokens_in == info["training_tokens"] * info["trained_steps"] \
        // info["total_steps"]
    assert receipt.amount < info["max_charge"]
    check_money(payer, node)


def test_node_killed_mid_job_fails_it_and_charges_only_what_was_receipted(
        node: Node, payer: Payer, training_file: Path) -> None:
    client = paid_client(node, payer)
    with training_file.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id,
                                         hyperparameters={"n_epochs": 60})
    running = wait(client, job.id, lambda j: agoranet_of(j)["payment"]["response"] is not None)
    seen = Receipt.from_json(agoranet_of(running)["payment"]["response"]["extra"]["receipt"])
    verify_receipt(seen, node.account.address)
    node.kill()  # the job's voucher is held in the ledger right now
    node.start()
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed" and job.error.code == "node_restarted"
    info = agoranet_of(job)
    receipt = settle(payer, job, node)
    # charged the last running receipt the node had persisted: at least the one we saw,
    # at most the whole training
    assert receipt is not None and seen.amount <= receipt.amount < info["max_charge"]
    assert receipt.request_id == seen.request_id
    listed = {j.id: j.status for j in client.fine_tuning.jobs.list().data}
    assert listed[job.id] == "failed" and "succeeded" in listed.values()
    check_money(payer, node)


def test_claims_on_chain_equal_the_receipts(chain: DevChain, addresses: ChainAddresses,
                                            node: Node, payer: Payer) -> None:
    assert payer.state is not None and payer.account is not None
    receipted = sum(r.amount for r in payer.receipts())
    assert receipted == node.receipts_total() > 0
    assert payer.withdraw().state == "pending"  # the node claims before the payer can leave
    w3 = connect(chain.rpc_url)
    deadline = time.monotonic() + 60
    while (claimed := read_channel(w3, addresses, payer.config).total_claimed) != receipted:
        assert claimed <= receipted
        assert time.monotonic() < deadline, (claimed, receipted)
        time.sleep(0.2)
    assert claimed <= node.receipts_total() and receipted >= claimed
    done = payer.withdraw(advance_time=True)
    assert done.state == "finalized" and done.returned == DEPOSIT - claimed
