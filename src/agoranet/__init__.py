"""agoranet: an open market for AI inference on open-weight models."""

from __future__ import annotations

import sys as _sys

__all__ = ["__version__"]

__version__ = "0.1.0"

# py_ecc (imported by web3 and eth_account, which most of agoranet uses) raises the
# interpreter's recursion limit to 100,000 when it is first imported. With that limit,
# deep recursion in C code (a JSON scanner, repr of a nested value) overflows the C
# stack and kills the process instead of raising RecursionError. Import it here, once,
# before anything else can, and keep the limit the interpreter had.
_limit = _sys.getrecursionlimit()
try:
    import py_ecc  # noqa: F401  (imported for its side effect, which is undone below)
except ImportError:  # without the 'chain' extra nothing raises the limit
    pass
finally:
    _sys.setrecursionlimit(_limit)
del _limit
