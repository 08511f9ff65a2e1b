"""Typed settings, read from the environment with the ``AGORANET_`` prefix.

Command-line options override them; every component receives a settings object
instead of reading the environment itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ChainSettings", "GatewaySettings", "HttpProtocol", "NodeSettings", "default_home"]


def default_home() -> Path:
    """Where agoranet keeps its state unless told otherwise (``AGORANET_HOME``)."""
    override = os.environ.get("AGORANET_HOME")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".agoranet"


# The HTTP/1.1 parser a server uses (agoranet.api.server): auto, or one forced.
HttpProtocol = Literal["auto", "h11", "httptools"]


class NodeSettings(BaseSettings):
    """Settings of one node: what it serves, at what price, under which limits."""

    model_config = SettingsConfigDict(env_prefix="AGORANET_NODE_", extra="ignore")

    engine: str = "transformers"
    model: str | None = Field(default=None, description="model directory, Hub id or GGUF path")
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    upstream_url: str | None = None
    upstream_api_key: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    # The parser of the model's tool-call format (agoranet.engines.toolparsers), for
    # tool_choice 'auto'; None: the one its chat template teaches, if known.
    tool_call_parser: str | None = None
    # A causal LM embeds (``/v1/embeddings``, normalised) only with a stated pooling of its
    # last layer's states: ``mean`` over the tokens or the ``last`` token's. An embedding
    # model (sentence-transformers layout) states its own.
    embedding_pooling: Literal["mean", "last"] | None = None
    # Prices in the stablecoin's base units per million tokens.
    price_in: int = Field(default=0, ge=0)
    price_out: int = Field(default=0, ge=0)
    # Surcharge per million tokens (prompt and completion) of a request that asks for
    # TOPLOC-style commitments (``"agoranet": {"commitments": true}``).
    price_commitments: int = Field(default=0, ge=0)
    # Concurrency: sequences generated at once, and how many more may wait.
    max_active: int = Field(default=8, ge=1)
    max_queue: int = Field(default=64, ge=0)
    # The transformers engine runs its active sequences in one forward pass per step
    # (continuous batching); False: one sequence per step, in turn.
    batching: bool = True
    # The vllm engine: the share of the GPU's memory vLLM may take (weights, KV cache).
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # What one client may hold: the request headers are due within ``header_timeout_s``,
    # each part of a body within ``body_timeout_s`` of the one before, an idle
    # connection closes after ``keep_alive_s``; connections over ``max_connections``
    # are closed at once.
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    keep_alive_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    # The HTTP/1.1 parser that serves (agoranet.api.server): httptools where installed
    # ("auto", on uvloop's event loop where installed too), else h11; set one to force it.
    http_protocol: HttpProtocol = "auto"
    # LoRA adapters: where uploads live, how many stay loaded, how large one may be,
    # and the surcharge per million tokens on top of the base prices.
    adapters_dir: Path | None = None
    max_adapters: int = Field(default=8, ge=1)
    max_adapter_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    adapter_surcharge_in: int = Field(default=0, ge=0)
    adapter_surcharge_out: int = Field(default=0, ge=0)
    # What a paid node charges for an upload, per started megabyte (10**6 bytes).
    price_adapter_storage: int = Field(default=10_000, ge=0,
                                       description="per started megabyte of an upload")

    # Fine-tuning jobs sold by the node (OpenAI's files + fine_tuning.jobs API).
    fine_tuning: bool = True
    fine_tuning_dir: Path | None = None
    price_training: int = Field(default=0, ge=0, description="per million training tokens")
    max_training_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    # Payments (x402). A node with a price and without ``free`` takes payment before
    # inference, through its own chain connection at ``rpc_url``.
    free: bool = False
    rpc_url: str = "http://127.0.0.1:8545"
    keystore: Path | None = None
    ledger_path: Path | None = Field(default=None, description="SQLite ledger file")
    # A PostgreSQL ledger (postgresql://...) in place of the SQLite file: replicas of one
    # node (one key, behind one load balancer) share it. A replica's holds outlive it by
    # ``ledger_lease_s`` seconds (then the next request on the channel releases them).
    ledger_url: str | None = Field(default=None, description="PostgreSQL ledger URL")
    ledger_lease_s: float = Field(default=15.0, gt=0, le=3600)
    # The node operator's secret (dashboard at ``/``, ``/metrics``), never a buyer's: a file
    # created with a random secret on first start; see ``operator_secret_path``.
    operator_secret_file: Path | None = None
    # Log lines as ``text`` or ``json``: one per request, one per claim or settle transaction.
    log_format: Literal["text", "json"] = "text"
    paid_paths: tuple[str, ...] = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
    withdraw_delay: int = Field(default=900, ge=900)
    min_deposit: int = Field(default=0, ge=0)
    chain_state_ttl: float = Field(default=30.0, ge=0, description="seconds channel state is cached")
    # Chain calls on the request path (reading a channel's state, deposits, exact
    # payments): each JSON-RPC request gives up after ``chain_timeout_s`` (no retries),
    # and they run on ``chain_workers`` dedicated threads; when all are waiting on the
    # RPC, further requests are refused at once (402) instead of queueing. While the
    # chain does not answer, channels read before are served from their cached state
    # for up to ``chain_stale_max_s`` seconds after it was read (capped at a third of
    # ``withdraw_delay``, so a withdrawal started meanwhile cannot complete before the
    # node claims); channels never read get a prompt 402.
    chain_timeout_s: float = Field(default=5.0, gt=0, le=120)
    chain_workers: int = Field(default=4, ge=1, le=64)
    chain_stale_max_s: float = Field(default=300.0, ge=0)
    settle_exact_before: bool = True
    # A stream carries a signed running receipt every this many tokens (0: none); a
    # stream that breaks is charged its last one, so the node is paid for what it sent.
    receipt_every: int = Field(default=16, ge=0)
    # Claims: when unclaimed earnings reach an amount, a count of requests, or an age
    # (seconds); the loop checks every ``settle_interval`` seconds.
    claim_min_amount: int = Field(default=1_000_000, ge=0)
    claim_max_requests: int = Field(default=1_000, ge=1)
    claim_max_age: float = Field(default=3600.0, ge=0)
    settle_interval: float = Field(default=5.0, gt=0)

    @property
    def paid(self) -> bool:
        """Payment is required unless ``free`` or nothing has a price (inference, or the
        fine-tuning the node sells)."""
        priced = self.price_in > 0 or self.price_out > 0 or \
            (self.fine_tuning and self.price_training > 0)
        return not self.free and priced

    def adapter_store(self) -> Path:
        return self.adapters_dir or default_home() / "node" / "adapters"

    def fine_tuning_store(self) -> Path:
        return self.fine_tuning_dir or default_home() / "node" / "fine_tuning"

    def operator_secret_path(self) -> Path:
        """The operator's secret (dashboard, metrics): beside the ledger file by default,
        created there (0600) on first start; see :mod:`agoranet.api.secret_gate`."""
        if self.operator_secret_file is not None:
            return self.operator_secret_file
        folder = self.ledger_path.parent if self.ledger_path else default_home() / "node"
        return folder / "operator.secret"


class ChainSettings(BaseSettings):
    """Which chain to use: a JSON-RPC URL and, optionally, pinned contract addresses.

    Unset addresses are filled in per chain id (see ``agoranet.chain.addresses``):
    the dev chain's constants on 31337; elsewhere the x402 SDK's escrow, collector
    and the chain's USDC, with only ``registry`` ours to set.
    """

    model_config = SettingsConfigDict(env_prefix="AGORANET_CHAIN_", extra="ignore")

    rpc_url: str = "http://127.0.0.1:8545"
    chain_id: int | None = Field(default=None, ge=1)
    stablecoin: str | None = None
    escrow: str | None = None
    collector: str | None = None
    registry: str | None = None


class GatewaySettings(BaseSettings):
    """Settings of the local gateway: where it listens, which nodes, policy and budget."""

    model_config = SettingsConfigDict(env_prefix="AGORANET_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8402, ge=0, le=65535)
    nodes: list[str] = Field(default_factory=list)
    registry_rpc_url: str | None = None  # discover nodes from the on-chain registry too
    # Tool servers to buy paid tools from (their root URLs), beside the registry's.
    tools: list[str] = Field(default_factory=list)
    # Channels one tool seller is paid over at once, each opened with ``deposit`` when
    # calls first need it (a channel pays one call at a time; more calls wait).
    tool_channels: int = Field(default=4, ge=1, le=64)
    # Paying: the chain, the wallet, and the deposit each node's channel opens with.
    rpc_url: str | None = None
    keystore: Path | None = None
    deposit: int = Field(default=1_000_000, ge=1, description="base units per node channel")
    # Each JSON-RPC call of the payer (opening and topping up channels) gives up after this.
    chain_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # Background audits against reference weights (a directory or Hub id you trust).
    audit_reference: str | None = None
    audit_share: float = Field(default=0.02, ge=0.0, le=1.0)
    # Audits paid through the node payers may spend at most this share of what requests spend.
    audit_budget_share: float = Field(default=0.02, ge=0.0, le=1.0)
    # ... plus this much in all (base units) regardless, to check the first nodes early.
    audit_budget_floor: int = Field(default=0, ge=0)
    # Reputation: the event store (next to the spend log unless set), and others' signed
    # score lists, read only if their signer is listed in ``reputation_trust`` (opt-in).
    reputation_log: Path | None = None
    reputation_trust: list[str] = Field(default_factory=list)
    reputation_lists: list[Path] = Field(default_factory=list)
    policy_file: Path | None = None
    # Request limits, as for a node (see NodeSettings).
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    keep_alive_s: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    http_protocol: HttpProtocol = "auto"  # as for a node
    # The longest wait for an answer's next token before failing over (the policy's
    # ``token_timeout_s`` unless set).
    token_timeout_s: float | None = Field(default=None, gt=0)
    budget: int | None = Field(default=None, ge=0, description="base units, all requests")
    default_max_tokens: int = Field(default=512, ge=1)
    refresh_s: float = Field(default=30.0, gt=0)
    spend_log: Path | None = None
    # Gateway keys: without ``open``, OpenAI's routes need a key from the key store
    # (beside the spend log unless set; the owner key is written 0600 beside the store).
    open: bool = False
    key_store: Path | None = None
    # Log lines as ``text`` or ``json``: one per request (``/metrics``: the owner key's).
    log_format: Literal["text", "json"] = "text"

    def spend_log_path(self) -> Path:
        return self.spend_log or default_home() / "gateway" / "spend.sqlite"

    def key_store_path(self) -> Path:
        return self.key_store or self.spend_log_path().parent / "keys.sqlite"

    def owner_key_path(self) -> Path:
        return self.key_store_path().parent / "owner.key"

    def job_salt_path(self) -> Path:
        """This gateway's secret salt for the owner tokens of its fine-tuning jobs."""
        return self.key_store_path().parent / "jobs.salt"

    def channels_dir(self) -> Path:
        return self.spend_log_path().parent / "channels"

    def reputation_path(self) -> Path:
        return self.reputation_log or self.spend_log_path().parent / "reputation.sqlite"
