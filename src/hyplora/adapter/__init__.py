"""The HypLoRA adapter: Lorentz maths, config, layer, loading, and the PEFT hooks (installed on import)."""

from hyplora.adapter.config import HypLoraConfig
from hyplora.adapter.loading import load_adapter
from hyplora.adapter.peft_hooks import check_hyplora_layers, install_peft_hooks

install_peft_hooks()

__all__ = ["HypLoraConfig", "check_hyplora_layers", "load_adapter"]
