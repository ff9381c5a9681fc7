"""HypLoRA: low-rank adaptation on the Lorentz manifold, as a PEFT LoRA variant.

The public names load lazily, so that `import hyplora.data` or the CLI does not import PEFT.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["HypLoraConfig", "check_hyplora_layers", "load_adapter", "__version__"]

_LAZY = {"HypLoraConfig": "hyplora.config", "check_hyplora_layers": "hyplora.model", "load_adapter": "hyplora.model"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hyplora' has no attribute {name!r}")
