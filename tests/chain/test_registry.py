"""ProviderRegistry: register, update, deregister, list."""

from __future__ import annotations

from typing import Any

import boa
import pytest

from agoranet.chain import compile_contract

from .helpers import deploy, reverts

H1, H2 = b"\x11" * 32, b"\x22" * 32


@pytest.fixture
def registry() -> Any:
    with boa.env.anchor():
        yield deploy(compile_contract("ProviderRegistry"))


def _names(reg: Any) -> list[str]:
    return [type(e).__name__ for e in reg.get_logs()]


def test_register_update_deregister(registry: Any) -> None:
    a, b, c = (boa.env.generate_address(n) for n in "abc")
    registry.register("https://a.example", H1, sender=a)
    assert _names(registry) == ["ProviderRegistered"]
    registry.register("https://b.example", H2, sender=b)
    registry.register("https://c.example", H1, sender=c)
    assert registry.providerCount() == 3 and registry.isRegistered(b)

    registry.register("https://a2.example", H2, sender=a)
    assert _names(registry) == ["ProviderUpdated"]
    assert registry.providerCount() == 3
    entry = registry.getProvider(a)
    assert (entry[0], entry[1], entry[2]) == (a, "https://a2.example", H2)
    assert entry[3] == boa.env.timestamp

    registry.deregister(sender=a)  # the last entry moves into slot 0
    assert _names(registry) == ["ProviderDeregistered"]
    assert registry.providerCount() == 2 and not registry.isRegistered(a)
    assert {registry.providerAt(i)[0] for i in range(2)} == {b, c}
    assert registry.getProvider(c)[1] == "https://c.example"
    registry.deregister(sender=c)
    registry.deregister(sender=b)
    assert registry.providerCount() == 0
    registry.register("https://a.example", H1, sender=a)
    assert registry.providerAt(0)[0] == a


def test_listing_pages(registry: Any) -> None:
    addrs = [boa.env.generate_address(f"p{i}") for i in range(7)]
    for i, addr in enumerate(addrs):
        registry.register(f"https://{i}.example", H1, sender=addr)
    assert [p[0] for p in registry.listProviders(0, 3)] == addrs[:3]
    assert [p[0] for p in registry.listProviders(5, 10)] == addrs[5:]
    assert list(registry.listProviders(7, 10)) == []
    assert len(registry.listProviders(0, 1_000)) == 7


def test_reverts(registry: Any) -> None:
    a = boa.env.generate_address("a")
    with reverts("EmptyUrl"):
        registry.register("", H1, sender=a)
    with reverts("EmptyOfferHash"):
        registry.register("https://a.example", b"\0" * 32, sender=a)
    with reverts("NotRegistered"):
        registry.deregister(sender=a)
    with reverts("NotRegistered"):
        registry.getProvider(a)
    with reverts("IndexOutOfRange"):
        registry.providerAt(0)
