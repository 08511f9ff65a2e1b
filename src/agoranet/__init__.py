"""agoranet: an open market for AI inference on open-weight models."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
