"""Parts of a node composed otherwise than by default: the one seam for wrappers.

``agoranet node`` builds its engine with :func:`agoranet.engines.registry.create_engine`,
opens its SQLite ledger itself and stacks its own middleware. :class:`NodeHooks` lets a
caller replace the first two and add middleware (inside the body limit, outside payment),
without the node knowing why. Test-only wrappers (cheating engines and ledgers, chaos:
:mod:`agoranet.testing`) use it; production code never sets it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.middleware import Middleware

from agoranet.engines.base import Engine

if TYPE_CHECKING:
    from agoranet.payments.accept.sqlite_ledger import SqliteLedger

__all__ = ["NodeHooks"]


@dataclass(frozen=True)
class NodeHooks:
    """``create_engine(name, **options)`` replaces the engine registry's; ``open_ledger(path)``
    opens the SQLite ledger (a PostgreSQL ledger cannot be replaced); ``middleware`` wraps
    the node's routes."""

    create_engine: Callable[..., Engine] | None = None
    open_ledger: Callable[[Path], SqliteLedger] | None = None
    middleware: Sequence[Middleware] = ()

    def engine(self, name: str, **options: Any) -> Engine:
        """The engine ``name`` built with ``options``, through the hook if one is set."""
        if self.create_engine is not None:
            return self.create_engine(name, **options)
        from agoranet.engines.registry import create_engine

        return create_engine(name, **options)
