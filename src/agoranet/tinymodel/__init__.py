"""The embedded default model: a tiny Llama trained here on a generated corpus."""

from agoranet.tinymodel.build import SIZES, TinySpec, build_tiny_model

__all__ = ["SIZES", "TinySpec", "build_tiny_model"]
