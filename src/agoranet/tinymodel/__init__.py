"""The embedded default model: a tiny Llama trained here on a generated corpus."""

from agoranet.tinymodel.build import TinySpec, build_tiny_model

__all__ = ["TinySpec", "build_tiny_model"]
