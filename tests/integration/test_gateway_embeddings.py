"""``/v1/embeddings`` through a paying gateway over two real nodes, with the openai client.

Node E serves the tiny embedding model for payment; node T serves the tiny causal LM
under the same name, free, without embeddings (so it would come first if capabilities
were ignored: it is cheaper). The gateway (keyed, with a wallet on the dev chain)
routes embeddings to E only, pays each request with a voucher and keeps E's signed
receipt; the vectors are those of a direct (paid) call to E; the money invariants
hold after E's claims.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from eth_account import Account
from openai import BadRequestError, OpenAI

from agoranet.chain.devchain import DevChain
from agoranet.gateway.spendlog import SpendLog
from agoranet.node.launcher import running_command
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore
from helpers import node_process
from keyed import KeyedGateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PASSWORD = "gateway-embeddings"
PRICE_IN = 2_000_000  # 2 base units per input token
TEXTS = ["The river runs past the old town.", "hello", "Tell me a story about a boat."]


def keystore(chain: DevChain, index: int, path: Path) -> Path:
    create_keystore(path, PASSWORD, scrypt_n=2**10,
                    private_key=bytes.fromhex(chain.private_keys[index].removeprefix("0x")))
    return path


@contextmanager
def paying_gateway(home: Path, chain: DevChain, wallet: Path, *nodes: str
                   ) -> Iterator[KeyedGateway]:
    """A keyed gateway with a wallet on the dev chain, once it has read every offer."""
    args = ["gateway", "--spend-log", str(home / "spend.sqlite"), "--rpc-url", chain.rpc_url,
            "--keystore", str(wallet), "--deposit", "200000"]
    for node in nodes:
        args += ["--node", node]
    with running_command(args, timeout=120) as url:
        deadline = time.monotonic() + 30
        while True:
            rows = httpx.get(url.removesuffix("/v1") + "/agoranet/nodes", timeout=5).json()
            if all(any(r["url"] == n and r["models"] for r in rows["nodes"]) for n in nodes):
                break
            assert time.monotonic() < deadline, "the gateway never read the nodes' offers"
            time.sleep(0.1)
        yield KeyedGateway(url, home)


def test_embeddings_through_the_gateway_are_the_nodes_paid_and_receipted(
        chain: DevChain, embedding_model: Path, tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.rpc import connect
    from agoranet.config import ChainSettings
    from agoranet.payments.pay.httpx_auth import PayerAuth
    from agoranet.payments.pay.payer import Payer
    from agoranet.testing.invariants import BuyerBook, assert_money_invariants, chain_snapshot
    from agoranet.testing.settle import force_settlement

    monkeypatch.setenv(PASSWORD_ENV_VAR, PASSWORD)
    w3 = connect(chain.rpc_url)
    addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
    before = chain_snapshot(w3, addresses, [chain.accounts[i] for i in (3, 5, 6)])
    ledger = tmp_path / "ledger.sqlite"
    home = tmp_path / "gw"
    with node_process(["--model", str(embedding_model), "--price-in", str(PRICE_IN),
                       "--rpc-url", chain.rpc_url, "--keystore",
                       str(keystore(chain, 3, tmp_path / "node.json")), "--ledger", str(ledger),
                       "--no-fine-tuning", "--no-adapters"]) as embedder, \
            node_process(["--model", str(tiny_model), "--served-model-name", "tiny-embed",
                          "--no-fine-tuning", "--no-adapters"]) as plain, \
            paying_gateway(home, chain, keystore(chain, 5, tmp_path / "gw.json"),
                           embedder, plain) as gw:
        key = gw.mint(gw.owner, "embedder", 5_000)
        client = OpenAI(base_url=gw.url, api_key=key, max_retries=0)
        batch = client.embeddings.create(model="tiny-embed", input=TEXTS)  # base64 on the wire
        single = client.embeddings.create(model="tiny-embed", input="hello",
                                          encoding_format="float",
                                          extra_body={"agoranet": {"prefer": "cheapest"}})
        with pytest.raises(BadRequestError, match="dimensions"):  # the node's 400, passed on
            client.embeddings.create(model="tiny-embed", input="x", dimensions=8)
        spent = gw.key("embedder")
        # The same request straight to E, paid by a payer of its own (x402 through httpx).
        payer = Payer(embedder, w3, addresses, account=Account.from_key(chain.private_keys[6]),
                      state_dir=tmp_path / "direct")
        payer.open(100_000)
        try:
            with httpx.Client(auth=PayerAuth(payer), timeout=60) as http:
                direct = OpenAI(base_url=embedder, api_key="x", max_retries=0,
                                http_client=http).embeddings.create(model="tiny-embed",
                                                                    input=TEXTS)
            direct_receipts = payer.receipts()
        finally:
            payer.close()
        health = httpx.get(plain.removesuffix("/v1") + "/health", timeout=5).json()

    # The vectors are the node's own: exactly those of a direct call, in input order.
    assert [d.index for d in batch.data] == [0, 1, 2]
    assert [d.embedding for d in batch.data] == [d.embedding for d in direct.data]
    assert len(batch.data[0].embedding) == 64
    assert single.data[0].embedding == pytest.approx(batch.data[1].embedding, abs=1e-6)
    assert batch.usage.prompt_tokens == direct.usage.prompt_tokens > len(TEXTS)
    # Only E answered, at its input price; nobody failed over (T, cheaper, never asked:
    # it would have refused with a 400 that ends the request).
    summaries = [batch.model_extra["agoranet"], single.model_extra["agoranet"]]  # type: ignore[index]
    assert [s["nodes"] for s in summaries] == [[embedder], [embedder]]
    assert [s["failovers"] for s in summaries] == [0, 0]
    amounts = [s["amount"] for s in summaries]
    assert amounts == [2 * batch.usage.prompt_tokens, 2 * single.usage.prompt_tokens]
    assert spent["spent"] == sum(amounts) and spent["reserved"] == 0
    assert "embedded_inputs" not in health  # T's engine never embedded anything
    # Each answer is in the spend log with E's signed receipt for its input tokens.
    log = SpendLog(home / "spend.sqlite")
    try:
        rows = [r for r in log.rows() if r.outcome == "ok"]
    finally:
        log.close()
    assert [(r.node, r.prompt_tokens, r.completion_tokens, r.amount, r.key) for r in rows] == [
        (embedder, batch.usage.prompt_tokens, 0, amounts[0], "embedder"),
        (embedder, single.usage.prompt_tokens, 0, amounts[1], "embedder")]
    receipts = [json.loads(str(r.receipt)) for r in rows]
    assert [(int(r["tokensIn"]), int(r["tokensOut"]), int(r["amount"])) for r in receipts] == [
        (batch.usage.prompt_tokens, 0, amounts[0]), (single.usage.prompt_tokens, 0, amounts[1])]
    assert [(r.tokens_in, r.amount) for r in direct_receipts] == [
        (direct.usage.prompt_tokens, amounts[0])]
    # Money: E claims; what it claimed is within the receipts, the buyers' spend covers it.
    [store] = {p.parent for p in home.rglob("payer.sqlite")}
    books = [BuyerBook.from_payer_store(store, headroom=5_000),
             BuyerBook.from_payer_store(tmp_path / "direct", headroom=5_000)]
    assert books[0].receipted == sum(amounts)
    assert books[1].receipted == amounts[0]
    force_settlement(chain.rpc_url, ledger, chain.private_keys[3])
    assert_money_invariants(w3, addresses, before=before, books=books, ledger=ledger)
