"""Payment schemes by name: each scheme's module registers itself; callers look it up.

Re-exported by :mod:`agoranet.payments.schemes` (import from there: that also loads the
built-in schemes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agoranet.errors import UnknownSchemeError

if TYPE_CHECKING:
    from agoranet.payments.schemes.base import ChainAccess, Scheme, SchemeClient, SchemeServer

__all__ = ["available_schemes", "find", "get_scheme", "register_scheme", "scheme_client",
           "scheme_server", "unregister_scheme"]

_SCHEMES: dict[str, Scheme] = {}


def register_scheme(scheme: Scheme) -> Scheme:
    """Make ``scheme`` available under its name (a later one of that name replaces it)."""
    _SCHEMES[scheme.name] = scheme
    return scheme


def unregister_scheme(name: str) -> None:
    """Forget the scheme registered as ``name`` (tests that register a toy one)."""
    _SCHEMES.pop(name, None)


def available_schemes() -> list[str]:
    """The names of the registered schemes, sorted."""
    return sorted(_SCHEMES)


def find(name: str) -> Scheme | None:
    """The scheme registered as ``name``, or None."""
    return _SCHEMES.get(name)


def get_scheme(name: str) -> Scheme:
    """The scheme registered as ``name``; UnknownSchemeError naming the known ones."""
    found = _SCHEMES.get(name)
    if found is None:
        raise UnknownSchemeError(f"unknown payment scheme {name!r}; known schemes: "
                                 f"{', '.join(available_schemes()) or 'none'}")
    return found


def scheme_server(name: str, chain: ChainAccess | None = None) -> SchemeServer:
    """A new server half of the scheme ``name`` (``chain``: how it settles on chain as the
    node; None: it settles nothing, e.g. ``exact`` is then not offered)."""
    return get_scheme(name).server(chain)


def scheme_client(name: str, **options: Any) -> SchemeClient:
    """A new client half of the scheme ``name``, with its scheme-specific options
    (``batch-settlement``: ``payer=``; ``exact``: ``account=``)."""
    return get_scheme(name).client(**options)
