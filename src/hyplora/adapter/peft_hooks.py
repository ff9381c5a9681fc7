"""PEFT's extension points for a non-linear LoRA variant, installed once when `hyplora` is imported.

- injection: every HypLoRA adapter PEFT injects is checked to really run HypLoRA (:func:`check_hyplora_layers`);
- `add_weighted_adapter`: refused for HypLoRA adapters (PEFT's "linear" mode would silently sum them);
- loading: the saved `peft_type` `HYPLORA` (`HypLoraConfig.to_dict`) maps to `HypLoraConfig` in PEFT's config
  registry, which every stock loader (`PeftModel.from_pretrained`, `AutoPeftModel*`, transformers' `load_adapter`
  and `from_pretrained` on an adapter folder) consults. Without this entry they fail on the unknown type.
Other adapters are unaffected.
"""

import functools

from peft import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.lora import LoraLayer, LoraModel
from torch import nn

from hyplora.adapter.config import SAVED_PEFT_TYPE, HypLoraConfig
from hyplora.adapter.layer import HypLoraLinearVariant


def is_hyplora_config(config) -> bool:
    return isinstance(config, HypLoraConfig) and config.use_hyplora


def check_hyplora_layers(model: nn.Module, adapter_name: str | None = None) -> int:
    """Assert that every layer holding a HypLoRA adapter really runs HypLoRA; return how many layers do.

    Raises `RuntimeError` naming the first layer where PEFT built something else (e.g. a backend that ignores
    LoRA variants and gives plain LoRA), or where a HypLoRA adapter targets no layer at all.
    """
    configs = getattr(model, "peft_config", {})
    names = [adapter_name] if adapter_name else [n for n, c in configs.items() if is_hyplora_config(c)]
    total = 0
    for name in names:
        count = 0
        for module_name, module in model.named_modules():
            if isinstance(module, LoraLayer) and name in module.lora_A:
                if not isinstance(module.lora_variant.get(name), HypLoraLinearVariant):
                    raise RuntimeError(
                        f"adapter '{name}': layer `{module_name}` ({type(module).__name__}) does not run HypLoRA; "
                        "its PEFT backend ignores LoRA variants. Exclude it from `target_modules`."
                    )
                count += 1
        if count == 0:
            raise RuntimeError(f"adapter '{name}' holds no HypLoRA layer: check `target_modules`.")
        total += count
    return total


def _refuse_weighted_hyplora(add_weighted_adapter):
    @functools.wraps(add_weighted_adapter)
    def guarded(self, adapters, *args, **kwargs):
        hyp = [name for name in adapters if is_hyplora_config(self.peft_config.get(name))]
        if hyp:
            raise NotImplementedError(
                f"add_weighted_adapter cannot combine HypLoRA adapters {hyp}: their weights act on Lorentz points "
                "through a non-linear map, so weighted sums or SVDs of B@A have no meaning."
            )
        return add_weighted_adapter(self, adapters, *args, **kwargs)

    return guarded


def _check_after_injection(post_injection_hook):
    @functools.wraps(post_injection_hook)
    def checked(self, model, config, adapter_name):
        post_injection_hook(self, model, config, adapter_name)
        if is_hyplora_config(config):
            check_hyplora_layers(self, adapter_name)

    return checked


def install_peft_hooks() -> None:
    """Register the saved type and wrap two `LoraModel` methods, once per process (the module docstring says why)."""
    PEFT_TYPE_TO_CONFIG_MAPPING[SAVED_PEFT_TYPE] = HypLoraConfig
    if getattr(LoraModel.add_weighted_adapter, "_hyplora_guard", False):
        return
    LoraModel.add_weighted_adapter = _refuse_weighted_hyplora(LoraModel.add_weighted_adapter)
    LoraModel._post_injection_hook = _check_after_injection(LoraModel._post_injection_hook)
    LoraModel.add_weighted_adapter._hyplora_guard = True
