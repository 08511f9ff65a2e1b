"""Inference engines behind one small interface, chosen by name."""

from agoranet.engines.base import (
    Delta,
    Engine,
    Finish,
    GenerationRequest,
    Message,
    ModelInfo,
    Prepared,
    StreamEvent,
    TokenLogprob,
    collect,
)
from agoranet.engines.registry import available_engines, create_engine, register_engine

__all__ = [
    "Delta",
    "Engine",
    "Finish",
    "GenerationRequest",
    "Message",
    "ModelInfo",
    "Prepared",
    "StreamEvent",
    "TokenLogprob",
    "available_engines",
    "collect",
    "create_engine",
    "register_engine",
]
