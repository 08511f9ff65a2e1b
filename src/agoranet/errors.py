"""The one exception root of agoranet, and the tree under it.

Every error the package raises on purpose derives from :class:`AgoranetError`.
Third-party errors are converted at the boundary with ``raise ... from exc``.

::

    AgoranetError
    ├── ConfigError                 bad settings or command-line values
    ├── RequestError                a client's request is wrong (maps to HTTP 4xx)
    │   ├── InvalidRequestError     400 invalid_request_error
    │   ├── ContextLengthError      400 context_length_exceeded
    │   ├── ModelNotFoundError      404 model_not_found
    │   ├── ToolNotFoundError       404 tool_not_found: no paid tool of that name here
    │   ├── ToolFailedError         422 tool_failed: a paid tool raised (nothing was charged)
    │   ├── PayloadTooLargeError    413
    │   ├── RequestTimeoutError     408: the body did not arrive in time
    │   ├── PaymentRequiredError    402 with the x402 payment requirements
    │   ├── PriceCapError           402: the price caps exclude every node (names the cheapest)
    │   ├── CapabilityNotOfferedError 400: no node serving the model offers what it needs (tools, JSON)
    │   ├── NodesDeclinedError      no node would serve it, none at fault (404, 402 unpayable)
    │   ├── AuthenticationError     401 invalid_api_key: no gateway key, a wrong, revoked or expired one
    │   ├── PermissionDeniedError   403: a gateway key may not do this (a model, another's key)
    │   └── OverloadedError         429 (carries retry_after seconds)
    ├── EngineError                 an engine failed to load or to generate (HTTP 5xx)
    │   ├── EngineNotFoundError     no engine registered under that name
    │   ├── ModelLoadError          weights or tokenizer could not be loaded
    │   └── UpstreamError           an upstream OpenAI-compatible server failed
    ├── InvalidJSONError            untrusted JSON too large, too deep or malformed (a ValueError)
    ├── ModelBuildError             the tiny model could not be built
    ├── NodeStartError              a node or gateway child process failed to start
    ├── GatewayCallError            the gateway refused an agent's call or did not answer (MCP tools)
    ├── TuningError                 fine-tuning and adapters
    │   ├── TuningDataError         a training file is malformed (names the line)
    │   └── AdapterError            an adapter directory or upload is invalid
    ├── OfferMismatchError          a node's offer does not match its registry entry
    ├── AuditError                  a node could not be audited (no answer, no token ids)
    ├── ReputationListError         a signed score list is malformed, tampered with or untrusted
    ├── ChainError                  JSON-RPC, contracts, dev chain
    │   ├── ContractError           compile or call of one of our contracts failed
    │   ├── DevChainError           anvil missing or failed to start
    │   ├── ChainTimeoutError       the RPC did not answer a call within its deadline
    │   └── ChainBusyError          every chain worker is still waiting on the RPC
    ├── WalletError                 keystore missing or unreadable, wallet operation refused
    │   └── WrongPasswordError      the keystore password is wrong
    └── PaymentError                x402 payments: ledger, receipts, payer, settlement
        ├── LedgerError             the node's ledger refused or failed an operation
        ├── CannotPayError          the payer cannot pay (its chain, channel or wallet): not the node's fault
        ├── UnknownSchemeError      no payment scheme is registered under that name
        └── ReceiptError            a node's signed receipt does not match what was received
            └── ChargeDisputeError  a node claims a charge no receipt backs (the payer stops)
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "AgoranetError",
    "AuditError",
    "AuthenticationError",
    "CannotPayError",
    "CapabilityNotOfferedError",
    "ChainBusyError",
    "ChainError",
    "ChainTimeoutError",
    "ChargeDisputeError",
    "ConfigError",
    "ContextLengthError",
    "ContractError",
    "DevChainError",
    "EngineError",
    "EngineNotFoundError",
    "GatewayCallError",
    "InvalidJSONError",
    "InvalidRequestError",
    "LedgerError",
    "ModelBuildError",
    "ModelLoadError",
    "ModelNotFoundError",
    "NodeStartError",
    "NodesDeclinedError",
    "OfferMismatchError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PaymentError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "PriceCapError",
    "ReceiptError",
    "ReputationListError",
    "RequestError",
    "RequestTimeoutError",
    "ToolFailedError",
    "ToolNotFoundError",
    "TuningDataError",
    "TuningError",
    "UnknownSchemeError",
    "UpstreamError",
    "WalletError",
    "WrongPasswordError",
]


class AgoranetError(Exception):
    """Root of every error agoranet raises on purpose."""


class ConfigError(AgoranetError):
    """Settings or command-line values are wrong."""


class RequestError(AgoranetError):
    """A client's request cannot be served as sent; maps to an HTTP 4xx."""

    status_code: int = 400
    error_type: str = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequestError(RequestError):
    """Malformed or out-of-range request."""


class ContextLengthError(RequestError):
    """Prompt plus requested completion exceed the model's context."""

    code = "context_length_exceeded"


class ModelNotFoundError(RequestError):
    """The requested model is not served here."""

    status_code = 404
    code = "model_not_found"


class ToolNotFoundError(RequestError):
    """No paid tool of that name is served here."""

    status_code = 404
    code = "tool_not_found"


class ToolFailedError(RequestError):
    """A paid tool raised or returned what its output schema refuses: nothing was charged."""

    status_code = 422
    error_type = "tool_error"
    code = "tool_failed"


class PayloadTooLargeError(RequestError):
    """The request body is over the size limit."""

    status_code = 413
    code = "payload_too_large"


class RequestTimeoutError(RequestError):
    """The client did not send the request body in time."""

    status_code = 408
    code = "request_timeout"


class AuthenticationError(RequestError):
    """No gateway key, or one that is wrong, revoked or expired (the key is never echoed)."""

    status_code = 401
    code = "invalid_api_key"


class PermissionDeniedError(RequestError):
    """A valid gateway key asked for what it may not: a model outside its list, a key
    outside its subtree."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class OverloadedError(RequestError):
    """Too many requests queued; retry later."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineError(AgoranetError):
    """An inference engine failed."""


class EngineNotFoundError(EngineError):
    """No engine is registered under the given name."""


class ModelLoadError(EngineError):
    """Weights or tokenizer could not be loaded."""


class UpstreamError(EngineError):
    """An upstream OpenAI-compatible server failed or answered with an error."""

    def __init__(self, message: str, *, status_code: int = 502, body: object = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class InvalidJSONError(AgoranetError, ValueError):
    """Untrusted JSON is over its size limit, too deeply nested, holds a huge number or is
    not JSON; also a ``ValueError``, so callers that refuse bad values catch it too."""

    def __init__(self, message: str, *, too_large: bool = False, problem: str = "") -> None:
        super().__init__(message)
        self.too_large = too_large
        self.problem = problem or message  # what is wrong, without naming the input


class ModelBuildError(AgoranetError):
    """The tiny model could not be built."""


class NodeStartError(AgoranetError):
    """A node child process exited or stayed unhealthy while starting."""


class GatewayCallError(AgoranetError):
    """The gateway refused a call of an agent (its plain message), or did not answer."""

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class TuningError(AgoranetError):
    """Fine-tuning or adapter handling failed."""


class TuningDataError(TuningError):
    """A training file is malformed; the message names the line."""


class AdapterError(TuningError):
    """An adapter directory or upload is invalid."""


class AuditError(AgoranetError):
    """A node could not be audited: unreachable, or it returned no token ids."""


class ReputationListError(AgoranetError):
    """A signed score list is malformed, its signature is bad, or its signer is not trusted."""


class OfferMismatchError(AgoranetError):
    """A node's offer is unsigned, or its hash or signer differs from the registry entry."""


class ChainError(AgoranetError):
    """Talking to the chain failed."""


class ContractError(ChainError):
    """Compiling or calling one of our contracts failed."""


class DevChainError(ChainError):
    """The local dev chain (anvil) is missing or failed to start."""


class ChainTimeoutError(ChainError):
    """The chain RPC did not answer a call within its deadline."""


class ChainBusyError(ChainError):
    """Every chain worker thread is still waiting on the RPC; the call was not started."""


class WalletError(AgoranetError):
    """The wallet's keystore is missing or unreadable, or a wallet operation is refused."""


class WrongPasswordError(WalletError):
    """The keystore password is wrong."""


class PaymentRequiredError(RequestError):
    """No payment, or not enough, or a refused one: HTTP 402 with x402 requirements.

    ``reason`` is the x402 error code (e.g. ``invalid_batch_settlement_evm_...``);
    ``corrective`` holds the channel snapshot a corrective 402 carries, if any.
    """

    status_code = 402
    error_type = "payment_required"

    def __init__(
        self,
        message: str,
        *,
        reason: str = "payment_required",
        corrective: dict[str, object] | None = None,
        status_code: int = 402,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = reason
        self.corrective = corrective
        self.status_code = status_code


class PriceCapError(RequestError):
    """The request's price caps exclude every node serving its model (the message names
    the cheapest offer)."""

    status_code = 402
    error_type = "payment_required"
    code = "price_above_cap"


class CapabilityNotOfferedError(RequestError):
    """No node serving the request's model offers a capability the request needs (tool
    calls, ``tool_choice`` ``auto``, a JSON ``response_format``): the buyer's need, not
    any node's fault."""

    code = "capability_not_offered"


class NodesDeclinedError(RequestError):
    """Every node declined for a reason not its own: none serves what was asked (404), or
    the gateway cannot pay them (402; 503 when a channel could not be opened)."""

    def __init__(self, message: str, *, status_code: int, code: str) -> None:
        super().__init__(message, param="model" if status_code == 404 else None)
        self.status_code, self.code = status_code, code
        self.error_type = {402: "payment_required", 503: "upstream_error"}.get(
            status_code, "invalid_request_error")


class PaymentError(AgoranetError):
    """A payment operation failed (payer side, ledger, settlement)."""


class CannotPayError(PaymentError):
    """The payer cannot pay: its chain cannot be read, its channel cannot be repaired or
    topped up. The buyer's trouble, never counted against the node."""


class UnknownSchemeError(PaymentError):
    """No payment scheme is registered under the name asked for (a node's settings or a
    caller's lookup; a buyer's payment in an unknown scheme is a 402 instead)."""


class LedgerError(PaymentError):
    """The node's ledger refused or failed an operation."""


class ReceiptError(PaymentError):
    """A node's signed receipt does not match what the payer received or signed."""


class ChargeDisputeError(ReceiptError):
    """A node claims a charged total that no receipt the payer holds backs: the payer
    counted what the node can claim as disputed spend and pays it no more."""
