"""Loading HypLoRA adapters, checking an injection, and the guards PEFT needs for a non-linear LoRA variant."""

import functools
import json
from pathlib import Path
from typing import Union

from peft import PeftConfig, PeftModel
from peft.tuners.lora import LoraLayer, LoraModel
from torch import nn

from hyplora.config import HypLoraConfig
from hyplora.errors import InputError
from hyplora.layer import HypLoraLinearVariant


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


def load_adapter(
    model: nn.Module, path: Union[str, Path], adapter_name: str = "default", is_trainable: bool = False
) -> PeftModel:
    """Load a HypLoRA, LoRA or DoRA adapter saved by `save_pretrained` onto `model` (a base model or `PeftModel`).

    The config class comes from `adapter_config.json` (`use_hyplora: true` -> `HypLoraConfig`), so logits are
    reproduced exactly. Raises `InputError` for a missing or incompatible adapter.
    """
    path = Path(path)
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise InputError(f"{config_file}: no adapter config (expected a folder written by save_pretrained)")
    try:
        saved = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{config_file}: malformed JSON ({err.msg} at line {err.lineno})") from None
    config_cls = HypLoraConfig if saved.get("use_hyplora") else PeftConfig
    config = config_cls.from_pretrained(str(path))
    config.inference_mode = not is_trainable
    try:
        if isinstance(model, PeftModel):
            if adapter_name not in model.peft_config:  # PEFT would read the config as a plain LoraConfig
                model.add_adapter(adapter_name, config)
            model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable)
            peft_model = model
        else:
            peft_model = PeftModel.from_pretrained(
                model, str(path), adapter_name=adapter_name, is_trainable=is_trainable, config=config
            )
    except RuntimeError as err:
        if "size mismatch" in str(err):
            first = next(line.strip() for line in str(err).splitlines() if "size mismatch" in line)
            raise InputError(f"{path}: adapter does not fit this base model ({first})") from None
        raise
    return peft_model  # the injection hook has checked every HypLoRA layer (install_peft_guards)


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


def install_peft_guards() -> None:
    """Wrap two `LoraModel` methods, once: refuse `add_weighted_adapter` on HypLoRA adapters (PEFT's 'linear'
    mode would silently sum them), and check every injection of a HypLoRA adapter. Other adapters are unaffected.
    """
    if getattr(LoraModel.add_weighted_adapter, "_hyplora_guard", False):
        return
    LoraModel.add_weighted_adapter = _refuse_weighted_hyplora(LoraModel.add_weighted_adapter)
    LoraModel._post_injection_hook = _check_after_injection(LoraModel._post_injection_hook)
    LoraModel.add_weighted_adapter._hyplora_guard = True
