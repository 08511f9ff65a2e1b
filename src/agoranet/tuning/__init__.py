"""LoRA fine-tuning and adapter packaging (import submodules directly)."""
