"""The contracts ship compiled (package data), current with their sources, and nothing that
runs a node, a gateway, a wallet or the dev chain imports the Vyper compiler."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from agoranet.chain.compiled import CONTRACT_NAMES, contract_abi, load_artifact
from agoranet.chain.compiler import ARTIFACTS_DIR, artifact_text, compile_contract
from agoranet.errors import ContractError


@pytest.mark.parametrize("name", CONTRACT_NAMES)
def test_shipped_artifact_is_a_fresh_compile_of_its_source(name: str) -> None:
    fresh = compile_contract(name, use_cache=False)
    shipped = (ARTIFACTS_DIR / f"{name}.json").read_text(encoding="utf-8")
    assert shipped == artifact_text(fresh), (
        f"{name}'s artefact is stale: run `make contracts` (python -m agoranet.chain.compiler "
        "--write) and commit src/agoranet/chain/artifacts")
    assert load_artifact(name) == fresh
    assert contract_abi(name) == fresh.abi


def test_every_shipped_contract_has_an_artifact_and_no_other() -> None:
    assert sorted(p.stem for p in ARTIFACTS_DIR.glob("*.json")) == sorted(CONTRACT_NAMES)
    for name in CONTRACT_NAMES:
        data = json.loads((ARTIFACTS_DIR / f"{name}.json").read_text(encoding="utf-8"))
        assert data["name"] == name and data["runtime_bytecode"].startswith("0x")


def test_unknown_contract_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match="unknown contract 'Nope'"):
        load_artifact("Nope")


RUNTIME = textwrap.dedent("""
    import sys
    import agoranet.cli.main, agoranet.node.app, agoranet.node.payment_setup
    import agoranet.gateway.app, agoranet.gateway.paying, agoranet.registry.onchain
    import agoranet.payments.channels, agoranet.payments.wallet, agoranet.payments.pay.payer
    from agoranet.chain.addresses import resolve_addresses
    from agoranet.chain.devchain import start_devchain
    from agoranet.payments.channels import escrow_contract
    from agoranet.payments.wallet import stablecoin_contract
    from agoranet.registry.onchain import registry_at

    with start_devchain() as chain:  # installs the contracts: the shipped artefacts
        w3 = chain.web3()
        addresses = resolve_addresses(chain.chain_id)
        assert stablecoin_contract(w3, addresses).functions.decimals().call() == 6
        escrow_contract(w3, addresses)
        assert registry_at(chain.rpc_url).contract.functions.register
    loaded = sorted(m for m in sys.modules if m == "vyper" or m.startswith("vyper."))
    print("VYPER:", loaded)
""")


def test_runtime_never_imports_the_compiler() -> None:
    done = subprocess.run([sys.executable, "-c", RUNTIME], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "VYPER: []" in done.stdout, done.stdout


def test_compiling_without_vyper_says_what_to_install() -> None:
    script = textwrap.dedent("""
        import sys
        sys.modules["vyper"] = None  # as if the package were not installed
        from agoranet.chain.compiler import compile_contract
        from agoranet.chain.compiled import load_artifact
        from agoranet.errors import ContractError
        assert load_artifact("Stablecoin").runtime_bytecode  # the artefacts need no vyper
        try:
            compile_contract("Stablecoin", use_cache=False)
        except ContractError as exc:
            print("REFUSED:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSED: compiling the contracts needs the vyper compiler" in done.stdout
