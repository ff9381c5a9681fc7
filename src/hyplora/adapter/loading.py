"""Loading a saved HypLoRA, LoRA or DoRA adapter onto a base model."""

import json
from pathlib import Path

from peft import PeftConfig, PeftModel
from torch import nn

from hyplora.adapter.config import HypLoraConfig
from hyplora.errors import InputError


def load_adapter(
    model: nn.Module, path: str | Path, adapter_name: str = "default", is_trainable: bool = False
) -> PeftModel:
    """Load a HypLoRA, LoRA or DoRA adapter saved by `save_pretrained` onto `model` (a base model or `PeftModel`).

    The config class comes from `adapter_config.json` (`use_hyplora: true` -> `HypLoraConfig`, whether `peft_type`
    says `HYPLORA` or, as hyplora saved it before, `LORA`), so logits are reproduced exactly. Raises `InputError` for
    a missing or incompatible adapter.
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
            if adapter_name not in model.peft_config:  # PEFT would read a `peft_type: LORA` one as a LoraConfig
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
    return peft_model  # the injection hook has checked every HypLoRA layer (hyplora.adapter.peft_hooks)
