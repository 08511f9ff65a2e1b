"""Fuzzing a live paid node and a live gateway: processes, targets, verdicts.

:func:`live_network` starts the real parts: a dev chain (anvil with our contracts),
a paid ``agoranet node`` process serving the tiny model (its settlement loop idle,
so the chain moves only if a payment moves it), two payers with open channels
(the real :class:`~agoranet.payments.pay.payer.Payer`), two :class:`GarbageNode` (one
free, one paid on the dev chain), and an ``agoranet gateway`` process with a
wallet in front of those two. :class:`Fuzzer` sends generated inputs at them, one
at a time, target by target (:data:`TARGETS`), and keeps the verdicts;
:meth:`Fuzzer.finish` then checks what must hold after any input: both processes
alive, error bodies in OpenAI's JSON, no stream cut off, and nothing charged for a
refused input: the node's ledger holds a receipt and a charged voucher for exactly
the paid requests that got a 200, the channels' charged totals equal their
receipts, both payers agree with the node, on chain both channels still hold
their deposits, unclaimed, and the gateway spent nothing and holds no reservation.

Client input (every target but ``node-garbage``) must never get a status >= 500,
with two exceptions, both caused by the request's own ``agoranet`` policy and
counted as ``upstream``: the gateway's 503 when it allows no node ("allowed by the
policy"), and its 504 when no node answered within a deadline the request set
tighter than the gateway's ("deadline this request set").

What a node's garbage maps to at the gateway (``node-garbage``): the gateway fails
over and, with no node left, answers 503 ``upstream_error``; a node's own
400/413/422 refusal is the client's fault and passes through with its status; a
stream that breaks after its first token ends with an error event in the stream.
Those 502/503 are counted as ``upstream``, apart from the failures: a 500 (or any
other status >= 500), an answer that is not JSON, a stream cut off without
``[DONE]`` or an error event, or no answer at all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agoranet.chain.addresses import ChainAddresses, resolve_addresses
from agoranet.chain.devchain import DevChain, start_devchain
from agoranet.config import ChainSettings
from agoranet.errors import PaymentError
from agoranet.node.launcher import free_port
from agoranet.payments import x402wire
from agoranet.payments.channels import read_channel
from agoranet.payments.pay.httpx_auth import PayerAuth, Payment
from agoranet.payments.pay.payer import Payer, PendingPayment
from agoranet.payments.wallet import PASSWORD_ENV_VAR, create_keystore, fund_dev

from .garbage_node import GarbageNode, garbage_node, paid_offer
from .strategies import (
    NodeScenario,
    chat_bodies,
    completion_bodies,
    good_scenario,
    node_scenarios,
    payment_headers,
    query_strings,
    raw_bodies,
)

__all__ = ["TARGETS", "Fuzzer", "Live", "Verdict", "live_network"]

PASSWORD = "fuzz-Password-9d1"
PRICE_IN, PRICE_OUT = 1_000_000, 3_000_000  # 1 and 3 base units per token
CAP = 600  # a paid request may cost at most this: any that runs is short (CPU)
DEPOSIT = 5_000_000
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
PAID_PATHS = ("/v1/chat/completions", "/v1/completions")
CHEAP_TOKENS = 2
CHEAP = {"model": "tiny", "messages": [{"role": "user", "content": "Hi."}],
         "max_tokens": CHEAP_TOKENS}

CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json", "application/json; charset=latin-1", "text/plain",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "*/*"])

# a gateway request's key: mostly the owner's (None), else none or a bad one (401)
AUTHORIZATIONS = st.sampled_from([None] * 8 + [
    "", "Bearer", "Bearer ", "Bearer agn-0000", "Basic dXNlcjpwYXNz", "bearer agn-" + "a" * 9000,
    "Bearer agn-\u00e9", "Bearer  agn-x  "])

# target name -> share of the inputs
TARGETS: dict[str, float] = {
    "node-schema": 0.20, "node-bodies": 0.20, "node-payments": 0.20, "node-query": 0.05,
    "gateway-schema": 0.10, "gateway-bodies": 0.10, "gateway-query": 0.05,
    "node-garbage": 0.10,
}


class Process:
    """``agoranet ARGS --port PORT``, its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agoranet", *args, "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})

    def wait_healthy(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.log.name}: not healthy\n{self.tail()}")
            time.sleep(0.2)

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.url}/health", timeout=10.0).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def tracebacks(self) -> list[str]:
        """The last line of every traceback in the log (the exception raised)."""
        found, inside = [], False
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                inside = True
            elif inside and line and not line.startswith(
                    (" ", "\t", "During handling", "The above exception")):
                found.append(line[:300])
                inside = False
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Live:
    chain: DevChain
    addresses: ChainAddresses
    node: Process
    ledger: Path
    gateway: Process
    fake: GarbageNode  # free
    paid_fake: GarbageNode  # asks for payment: the gateway pays it from its wallet
    required: dict[str, Any]  # a real PAYMENT-REQUIRED of the node, decoded
    gateway_key: str | None  # the gateway's owner key (None for an open gateway)
    body_payer: Payer
    header_payer: Payer
    onchain_before: dict[str, tuple[int, int]]
    spend_log: Path  # the gateway's



def _payer(chain: DevChain, addresses: ChainAddresses, url: str, state: Path) -> Payer:
    account: LocalAccount = Account.create()
    w3 = chain.web3()
    fund_dev(w3, addresses, account.address, stablecoin=2 * DEPOSIT, native=10**18)
    payer = Payer(url, w3, addresses, account=account, state_dir=state, max_per_request=CAP)
    payer.open(DEPOSIT)
    return payer


def onchain(live_chain: DevChain, addresses: ChainAddresses,
            payers: list[Payer]) -> dict[str, tuple[int, int]]:
    """(balance, total claimed) of each payer's channel."""
    w3 = live_chain.web3()
    found = {}
    for payer in payers:
        info = read_channel(w3, addresses, payer.config)
        found[payer.state.channel_id] = (info.balance, info.total_claimed)  # type: ignore[union-attr]
    return found


@contextmanager
def live_network(tmp: Path, model: Path) -> Iterator[Live]:
    """Chain, paid node, two payers, fake node, gateway; all stopped at the end."""
    env = {PASSWORD_ENV_VAR: PASSWORD, "OMP_NUM_THREADS": "1",
           "AGORANET_HOME": str(tmp / "home")}
    with ExitStack() as stack:
        chain = stack.enter_context(start_devchain())
        addresses = resolve_addresses(chain.chain_id, ChainSettings(rpc_url=chain.rpc_url))
        key = bytes.fromhex(chain.private_keys[7].removeprefix("0x"))
        keystore = tmp / "node-key.json"
        create_keystore(keystore, PASSWORD, private_key=key, scrypt_n=2**10)
        ledger = tmp / "ledger.sqlite"
        node = Process([
            "node", "--model", str(model), "--price-in", str(PRICE_IN),
            "--price-out", str(PRICE_OUT), "--rpc-url", chain.rpc_url, "--keystore",
            str(keystore), "--ledger", str(ledger), "--settle-interval", "3600",
            "--claim-max-age", "1000000", "--chain-state-ttl", "5", "--max-active", "2",
            "--max-queue", "8", "--receipt-every", "2"], tmp / "node.log", env)
        stack.callback(node.stop)
        fake = stack.enter_context(garbage_node())
        node.wait_healthy()
        required = x402wire.decode_json(httpx.post(
            f"{node.url}/v1/chat/completions", json=CHEAP).headers[x402wire.PAYMENT_REQUIRED],
            x402wire.PAYMENT_REQUIRED)
        paid_fake = stack.enter_context(garbage_node(paid_offer(
            Account.from_key(chain.private_keys[9]), addresses, chain.chain_id)))
        policy = tmp / "policy.json"
        # a failing node is banned for a millisecond: every input reaches the fake nodes
        policy.write_text(json.dumps({"ban_base_s": 0.001, "ban_cap_s": 0.001,
                                      "first_token_timeout_s": 5}))
        wallet = Account.from_key(chain.private_keys[8])
        fund_dev(chain.web3(), addresses, wallet.address, stablecoin=10 * DEPOSIT,
                 native=10**18)
        gateway_key = tmp / "gateway-key.json"
        create_keystore(gateway_key, PASSWORD, private_key=bytes(wallet.key), scrypt_n=2**10)
        gateway = Process(["gateway", "--open", "--node", fake.url, "--node", paid_fake.url,
                           "--policy", str(policy), "--rpc-url", chain.rpc_url,
                           "--keystore", str(gateway_key), "--deposit", "200000",
                           "--spend-log", str(tmp / "gateway" / "spend.sqlite")],
                          tmp / "gateway.log", env)
        stack.callback(gateway.stop)
        gateway.wait_healthy()
        body_payer = _payer(chain, addresses, node.url, tmp / "payer-bodies")
        stack.callback(body_payer.close)
        header_payer = _payer(chain, addresses, node.url, tmp / "payer-headers")
        stack.callback(header_payer.close)
        _wait_offers(gateway.url)
        before = onchain(chain, addresses, [body_payer, header_payer])
        owner = tmp / "gateway" / "owner.key"  # beside the key store, beside the spend log
        key = owner.read_text().strip() if owner.exists() else None
        yield Live(chain, addresses, node, ledger, gateway, fake, paid_fake, required, key,
                   body_payer, header_payer, before, tmp / "gateway" / "spend.sqlite")


def _wait_offers(gateway: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(httpx.get(f"{gateway}/agoranet/nodes", timeout=5.0).json()["nodes"]) < 2 or \
            any(not n["models"] for n in
                httpx.get(f"{gateway}/agoranet/nodes", timeout=5.0).json()["nodes"]):
        assert time.monotonic() < deadline, "the gateway never read the fake nodes' offers"
        time.sleep(0.2)


# ---------------------------------------------------------------- verdicts


@dataclass
class Failure:
    target: str
    what: str
    given: str


@dataclass
class Verdict:
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # after the run; empty when all held
    tracebacks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def inputs(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def ok(self) -> bool:
        return not self.failures and not self.checks


def status_class(status: int | None) -> str:
    if status is None:
        return "no answer"
    if status == 402:
        return "402"
    return f"{status // 100}xx"


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _error_json(response: httpx.Response, body: bytes) -> str | None:
    """Why an error answer is not OpenAI's error JSON, or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return f"HTTP {response.status_code} with a body that is not JSON: {_short(body)}"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return f"HTTP {response.status_code} without OpenAI's error JSON: {_short(body)}"
    return None


def _stream_end(body: bytes) -> str | None:
    """Why a 200 event stream is not whole (it ends with [DONE] or an error event), or None."""
    events = [line[5:].strip() for line in body.decode(errors="replace").splitlines()
              if line.startswith("data:")]
    if events and events[-1] == "[DONE]":
        return None
    if events:
        try:
            last = json.loads(events[-1])
        except ValueError:
            last = None
        if isinstance(last, dict) and "error" in last:
            return None
    return f"stream ended without [DONE] or an error event: {_short(body[-300:])}"


# ---------------------------------------------------------------- the fuzzer


class Fuzzer:
    """Sends generated inputs at a :class:`Live` network and keeps the verdicts."""

    def __init__(self, live: Live, progress: Callable[[str], None] | None = None) -> None:
        self.live = live
        self.progress = progress or (lambda target: None)
        self.verdict = Verdict()
        self.paid_ok: set[str] = set()  # request ids of paid requests that got a 200
        self.node_http = httpx.Client(base_url=live.node.url, timeout=TIMEOUT)
        self.gateway_http = httpx.Client(
            base_url=live.gateway.url, timeout=TIMEOUT,
            headers={"authorization": f"Bearer {live.gateway_key}"} if live.gateway_key else {})
        self.paying_auth = PayerAuth(live.body_payer)
        self.paying_http = httpx.Client(base_url=live.node.url, timeout=TIMEOUT,
                                        auth=self.paying_auth)
        self._schemas: dict[str, Any] = {}

    def close(self) -> None:
        for client in (self.node_http, self.gateway_http, self.paying_http):
            client.close()

    # ------------------------------------------------------------ driving

    def run(self, counts: dict[str, int]) -> Verdict:
        """Fuzz each target with its count of inputs, then check what must hold."""
        for target, count in counts.items():
            if count > 0:
                getattr(self, "_" + target.replace("-", "_"))(target, count)
                for name, process in (("node", self.live.node),
                                      ("gateway", self.live.gateway)):
                    if not process.healthy():
                        self.verdict.checks.append(f"the {name} died during {target}: "
                                                   f"{process.tail(1500)}")
                        return self.finish()
        return self.finish()

    def _drive(self, target: str, count: int, strategy: st.SearchStrategy[Any],
               send: Callable[[Any], None]) -> None:
        counter = self.verdict.counts.setdefault(target, Counter())
        start = sum(counter.values())
        stalls = 0
        while sum(counter.values()) - start < count and stalls < 3:
            before = sum(counter.values())

            @settings(max_examples=count - (before - start), database=None, deadline=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(strategy)
            def run(value: Any) -> None:
                if sum(counter.values()) - start < count:
                    send(value)

            run()
            stalls = stalls + 1 if sum(counter.values()) == before else 0

    def _record(self, target: str, status: int | None, failure: str | None,
                given: Any, *, upstream: bool = False) -> None:
        counter = self.verdict.counts.setdefault(target, Counter())
        self.progress(target)
        if failure is not None:
            counter["FAILED"] += 1
            self.verdict.failures.append(Failure(target, failure, _short(given, 600)))
        elif upstream:
            counter["upstream 502/503"] += 1
        else:
            counter[status_class(status)] += 1

    def _exchange(self, target: str, client: httpx.Client, request: httpx.Request,
                  given: Any, *, client_input: bool = True,
                  allow_503: Callable[[httpx.Request, bytes], bool] | None = None,
                  auth: httpx.Auth | None = None) -> httpx.Response | None:
        """Send ``request`` (with ``auth``, or the client's), read the whole answer, judge
        it; the response (read)."""
        try:
            response = client.send(request, stream=True,
                                   auth=httpx.USE_CLIENT_DEFAULT if auth is None else auth)
        except httpx.LocalProtocolError:
            return None  # not sendable over HTTP at all (h11 refused it): not an input
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            self._record(target, None, f"no answer: {type(exc).__name__}: {exc}", given)
            return None
        try:
            body = response.read()
            broken = None
        except httpx.HTTPError as exc:
            body = b""
            broken = f"answer cut off: {type(exc).__name__}: {exc}"
        finally:
            response.close()
        status = response.status_code
        failure = broken
        upstream = False
        if failure is None and status >= 500:
            upstream = status in (502, 503, 504) and (
                not client_input or (allow_503 is not None and allow_503(request, body)))
            if not upstream:
                failure = f"HTTP {status}: {_short(body)}"
        if failure is None and status >= 400 and request.method != "HEAD":  # (no body)
            failure = _error_json(response, body)
        if failure is None and status == 200 and \
                "text/event-stream" in response.headers.get("content-type", ""):
            failure = _stream_end(body)
        self._record(target, status, failure, given, upstream=upstream)
        return response

    @staticmethod
    def _rid(target: str) -> str:
        return f"fuzz-{target}-{uuid.uuid4().hex[:12]}"

    # ------------------------------------------------------------ node targets

    def _schema(self, url: str) -> Any:
        if url not in self._schemas:
            import schemathesis
            from schemathesis import GenerationMode

            schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
            strategies = [result.ok().as_strategy(generation_mode=mode)
                          for result in schema.get_all_operations()
                          for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
            self._schemas[url] = st.one_of(strategies)
        return self._schemas[url]

    def _schema_cases(self, target: str, count: int, url: str, client: httpx.Client) -> None:
        def send(given: tuple[Any, bool]) -> None:
            case, known_model = given
            if (case.path_parameters or {}).get("name") == "owner" and \
                    case.path.endswith("/revoke"):
                return  # the fuzzer's own key: revoking it would end the gateway's fuzzing
            if known_model and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = "tiny"  # past "no such model", to the deeper checks
            kwargs = case.as_transport_kwargs(base_url=url)
            headers = {k: v for k, v in kwargs.get("headers", {}).items()
                       if k.lower() not in ("connection", "accept-encoding")}
            headers["x-request-id"] = self._rid(target)
            data, files = kwargs.get("data"), kwargs.get("files")
            content = None
            form: dict[str, Any] | None = None
            if isinstance(data, (bytes, str)):
                content = data
            elif isinstance(data, dict):
                form = data
            if files:
                files, fields = _files(files)
                form = {**(form or {}), **fields}
            try:
                request = client.build_request(
                    kwargs["method"], kwargs["url"], headers=headers,
                    params=kwargs.get("params") or None, content=content, data=form,
                    json=kwargs.get("json") if content is None and form is None and
                    files is None and "json" in kwargs else None,
                    files=files or None, cookies=kwargs.get("cookies"))
            except (httpx.HTTPError, httpx.InvalidURL, TypeError, ValueError, UnicodeError):
                return  # not sendable over HTTP at all: not an input
            self._exchange(target, client, request, case.as_curl_command(),
                           allow_503=_policy_refusal)

        self._drive(target, count, st.tuples(self._schema(url), st.booleans()), send)

    def _node_schema(self, target: str, count: int) -> None:
        self._schema_cases(target, count, self.live.node.url, self.node_http)

    def _node_bodies(self, target: str, count: int) -> None:
        strategy = st.tuples(st.one_of(
            st.tuples(st.just("/v1/chat/completions"), chat_bodies()),
            st.tuples(st.just("/v1/completions"), completion_bodies()),
            st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions",
                                       "/tokenize"]), raw_bodies())), CONTENT_TYPES)

        def send(given: tuple[tuple[str, Any], str]) -> None:
            (path, body), content_type = given
            rid = self._rid(target)
            headers = {"x-request-id": rid, "content-type": "application/json"}
            paid = None
            if isinstance(body, dict) and path in PAID_PATHS:
                client = self.paying_http  # the real payer pays what is worth paying
                request = client.build_request(
                    "POST", path, content=json.dumps(body).encode(), headers=headers)
                paid = self.paying_auth.paying(Payment(CAP))
            else:
                client = self.node_http
                content = body if isinstance(body, bytes) else json.dumps(body).encode()
                headers["content-type"] = content_type
                request = client.build_request("POST", path, content=content, headers=headers)
            try:
                response = self._exchange(target, client, request, given, auth=paid)
            except Exception as exc:  # the payer refused the node's answer (receipt)
                self._record(target, None, f"payer: {type(exc).__name__}: {exc}", given)
                return
            if response is not None and response.status_code == 200 and path in PAID_PATHS:
                self.paid_ok.add(response.request.headers.get("x-request-id", rid))

        self._drive(target, count, strategy, send)

    def _node_payments(self, target: str, count: int) -> None:
        payer = self.live.header_payer

        def send(data: st.DataObject) -> None:
            rid = self._rid(target)
            # (drawn whatever the kind: hypothesis wants the same draws from the same data)
            kind = data.draw(st.sampled_from(["fresh"] * 6 + ["reused", "odd"]))
            pick = data.draw(st.integers(0, 2**16))
            odd = data.draw(st.sampled_from(["", " ", "x" * 8_000, "'; DROP TABLE receipts;--",
                                             "%00", "\\u0000", "a,b"]))
            if kind == "reused" and self.paid_ok:  # the node answers 409: already charged
                rid = sorted(self.paid_ok)[pick % len(self.paid_ok)]
            elif kind == "odd":  # the node keys its ledger by this header
                rid = odd
            stream = data.draw(st.booleans())
            pending = payer.pay(CAP, rid)
            header = data.draw(payment_headers(pending.header))
            raw = header if isinstance(header, bytes) else header.encode()
            body = {**CHEAP, "stream": stream}
            request = self.node_http.build_request(
                "POST", "/v1/chat/completions", json=body,
                headers=[(b"x-request-id", rid.encode()),
                         (x402wire.PAYMENT_SIGNATURE.encode(), raw)])
            response = self._exchange(target, self.node_http, request, (rid[:40], header))
            if response is not None and response.status_code == 200:
                self._accepted(pending, response)

        self._drive(target, count, st.data(), send)

    def _accepted(self, pending: PendingPayment, response: httpx.Response) -> None:
        """A mutated payment that was still good, charged: the payer takes its receipt
        (under the node's request id: its own, when the request sent an empty one)."""
        settle = _payment_response(response)
        if settle is None:
            self.verdict.checks.append("a paid 200 without a receipt")
            return
        request_id = str(settle["extra"]["receipt"]["requestId"])
        self.paid_ok.add(request_id)
        try:
            self.live.header_payer.settle(
                dataclasses.replace(pending, request_id=request_id), settle, "tiny",
                max_tokens=CHEAP_TOKENS)
        except PaymentError as exc:
            self.verdict.checks.append(f"the payer refused an accepted payment's receipt: {exc}")

    def _query(self, target: str, count: int, client: httpx.Client,
               gets: list[str], posts: list[str]) -> None:
        known = st.sampled_from([("GET", p) for p in gets] + [("POST", p) for p in posts])
        unknown = st.tuples(  # routing answers these: 404 and 405 in OpenAI's error JSON
            st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
            st.sampled_from([*gets, *posts, "/", "/v1", "/v1/", "/v2/models", "//health",
                             "/v1/chat/completions/", "/.well-known/", "/v1/files/%2e%2e"]))
        strategy = st.tuples(known | unknown, query_strings())

        def send(given: tuple[tuple[str, str], str]) -> None:
            (method, path), query = given
            try:
                request = client.build_request(
                    method, f"{path}?{query}",
                    content=json.dumps(CHEAP).encode() if method == "POST" else None,
                    headers={"x-request-id": self._rid(target),
                             "authorization": "Bearer fuzz"})
            except (httpx.HTTPError, httpx.InvalidURL, ValueError, UnicodeError):
                return
            self._exchange(target, client, request, given, allow_503=_policy_refusal)

        self._drive(target, count, strategy, send)

    def _node_query(self, target: str, count: int) -> None:
        self._query(target, count, self.node_http,
                    ["/v1/models", "/health", "/.well-known/agoranet", "/openapi.json",
                     "/v1/adapters", "/v1/fine_tuning/jobs", "/v1/files/file-x",
                     "/v1/fine_tuning/jobs/ftjob-x/events"],
                    ["/v1/chat/completions", "/v1/completions", "/tokenize", "/v1/adapters"])

    # ------------------------------------------------------------ gateway targets

    def _gateway_schema(self, target: str, count: int) -> None:
        self.live.fake.scenario = good_scenario()
        self._schema_cases(target, count, self.live.gateway.url, self.gateway_http)

    def _gateway_bodies(self, target: str, count: int) -> None:
        self.live.fake.scenario = good_scenario()
        strategy = st.tuples(chat_bodies() | raw_bodies(), AUTHORIZATIONS)

        def send(given: tuple[Any, str | None]) -> None:
            body, authorization = given
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers = {"content-type": "application/json"}
            if authorization is not None:  # else the owner key
                headers["authorization"] = authorization.encode("latin-1")  # type: ignore[assignment]
            request = self.gateway_http.build_request(
                "POST", "/v1/chat/completions", content=content, headers=headers)
            self._exchange(target, self.gateway_http, request, body,
                           allow_503=_policy_refusal)

        self._drive(target, count, strategy, send)

    def _gateway_query(self, target: str, count: int) -> None:
        self.live.fake.scenario = good_scenario()
        self._query(target, count, self.gateway_http,
                    ["/v1/models", "/health", "/agoranet/nodes", "/openapi.json"],
                    ["/v1/chat/completions"])

    def _node_garbage(self, target: str, count: int) -> None:
        free, paid = self.live.fake, self.live.paid_fake
        strategy = st.one_of(
            st.tuples(st.just(False), node_scenarios(), st.booleans()),
            st.tuples(st.just(True), node_scenarios(self.live.required), st.booleans()))

        def send(given: tuple[bool, NodeScenario, bool]) -> None:
            pays, scenario, stream = given
            fake = paid if pays else free
            fake.scenario = scenario
            body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi."}],
                    "max_tokens": 4, "stream": stream,
                    "agoranet": {"allow": [f"{fake.url}/v1"]}}  # this node and no other
            request = self.gateway_http.build_request("POST", "/v1/chat/completions",
                                                      json=body)
            self._exchange(target, self.gateway_http, request, given, client_input=False)

        try:
            self._drive(target, count, strategy, send)
        finally:
            free.scenario = paid.scenario = good_scenario()

    # ------------------------------------------------------------ after the run

    def finish(self) -> Verdict:
        live, checks = self.live, self.verdict.checks
        for name, process in (("node", live.node), ("gateway", live.gateway)):
            if not process.healthy():
                checks.append(f"the {name} is not alive after the run")
            self.verdict.tracebacks[name] = process.tracebacks()
        checks += ledger_problems(live.ledger, self.paid_ok)
        node_charged = dict(_rows(live.ledger, "SELECT channel_id, charged FROM channels"))
        for name, payer in (("body", live.body_payer), ("header", live.header_payer)):
            assert payer.state is not None
            if node_charged.get(payer.state.channel_id, 0) != payer.state.charged:
                checks.append(f"the node charged the {name} payer's channel "
                              f"{node_charged.get(payer.state.channel_id)}, the payer's "
                              f"receipts say {payer.state.charged}")
        # the gateway paid nothing for any input: the free fake node costs nothing, the paid
        # one never sent a receipt, so its spend is only what the tokens it streamed without
        # one may cost (rows "unreceipted", counted against it: payments.unreceipted); and no
        # reservation outlived its request
        budget = httpx.get(f"{live.gateway.url}/agoranet/nodes", timeout=10.0).json()["budget"]
        spent = _rows(live.spend_log, "SELECT node, outcome, amount FROM spend WHERE amount > 0")
        unreceipted = [r for r in spent
                       if r[1] == "unreceipted" and r[0].startswith(live.paid_fake.url)]
        if budget["reserved"] or budget["spent"] != sum(r[2] for r in unreceipted) or \
                len(unreceipted) != len(spent):
            checks.append(f"the gateway's budget after the run: {budget}; spend rows {spent}")
        after = onchain(live.chain, live.addresses, [live.body_payer, live.header_payer])
        if after != live.onchain_before:
            checks.append(f"the channels moved on chain: {live.onchain_before} -> {after}")
        if any(balance != DEPOSIT or claimed for balance, claimed in after.values()):
            checks.append(f"a channel is not its deposit, unclaimed: {after}")
        return self.verdict


def ledger_problems(ledger: Path, paid_ok: set[str]) -> list[str]:
    """What in the node's ledger contradicts "charged exactly the paid 200s"."""
    problems = []
    receipts = {str(r[0]) for r in _rows(ledger, "SELECT request_id FROM receipts")}
    if receipts - paid_ok:
        problems.append(f"receipts for refused requests: {sorted(receipts - paid_ok)[:5]}")
    if paid_ok - receipts:
        problems.append(f"paid 200s without a receipt: {sorted(paid_ok - receipts)[:5]}")
    vouchers = _rows(ledger, "SELECT request_id, status FROM vouchers")
    held = [r for r, s in vouchers if s == "held"]
    if held:
        problems.append(f"vouchers still held after the run: {held[:5]}")
    charged = {str(r) for r, s in vouchers if s == "charged"}
    if charged - paid_ok:
        problems.append(f"vouchers charged for refused requests: {sorted(charged - paid_ok)[:5]}")
    running = {str(r[0]) for r in _rows(ledger, "SELECT request_id FROM running_receipts")}
    if running - paid_ok:
        problems.append(f"running receipts for refused requests: {sorted(running - paid_ok)[:5]}")
    sums = dict(_rows(ledger, "SELECT channel_id, SUM(amount) FROM receipts GROUP BY channel_id"))
    for channel, charged_total, claimed in _rows(
            ledger, "SELECT channel_id, charged, claimed FROM channels"):
        if charged_total != sums.get(channel, 0):
            problems.append(f"channel {channel} charged {charged_total} but its receipts "
                            f"sum to {sums.get(channel, 0)}")
        if claimed:
            problems.append(f"channel {channel} claimed {claimed} with the settlement idle")
    return problems


def _rows(ledger: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _payment_response(response: httpx.Response) -> dict[str, Any] | None:
    """The payment response of a paid answer: its header, or a stream's final receipt event."""
    try:
        if header := response.headers.get(x402wire.PAYMENT_RESPONSE):
            return x402wire.decode_json(header, x402wire.PAYMENT_RESPONSE)
        for line in response.text.splitlines():
            if '"agoranet.receipt"' in line:
                found = json.loads(line[5:])["x402_payment_response"]
                return found if isinstance(found, dict) else None
    except (ValueError, KeyError, TypeError):
        return None
    return None


def _policy_refusal(request: httpx.Request, body: bytes) -> bool:
    """A gateway 503 that the client's own ``agoranet`` policy caused (it excluded every
    node): the gateway's documented answer, not a failure of the gateway."""
    try:
        asked = b'"agoranet"' in request.content
    except httpx.RequestNotRead:  # a streamed (multipart) body: none of the chat's
        asked = False
    return asked and (b"allowed by the policy" in body or b"deadline this request set" in body)


def _files(files: list[tuple[str, tuple[str | None, Any]]]
           ) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """Schemathesis's multipart parts (requests' shape) as httpx's files and form fields."""
    out: list[tuple[str, Any]] = []
    fields: dict[str, str] = {}
    for name, (filename, content) in files:
        if filename is None:
            fields[name] = content.decode(errors="replace") if isinstance(content, bytes) \
                else str(content)
        else:
            out.append((name, (filename, content if isinstance(content, bytes)
                               else str(content).encode())))
    return out, fields
