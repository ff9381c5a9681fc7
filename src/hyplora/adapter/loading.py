"""Loading a saved HypLoRA, LoRA or DoRA adapter onto a base model."""

import json
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel
from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from safetensors import SafetensorError, safe_open
from torch import nn

from hyplora.adapter.config import HypLoraConfig
from hyplora.errors import InputError, first_line


def load_adapter(
    model: nn.Module, path: str | Path, adapter_name: str = "default", is_trainable: bool = False
) -> PeftModel:
    """Load a HypLoRA, LoRA or DoRA adapter saved by `save_pretrained` onto `model` (a base model or `PeftModel`).

    The config class comes from `adapter_config.json` (`use_hyplora: true` -> `HypLoraConfig`, whether `peft_type`
    says `HYPLORA` or, as hyplora saved it before, `LORA`), so logits are reproduced exactly. Raises `InputError` for
    a missing or incompatible adapter.
    """
    path = Path(path)
    config = check_adapter_folder(path)
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
    except ValueError as err:  # e.g. target modules absent from this base model
        raise InputError(f"{path}: adapter does not fit this base model ({first_line(err)})") from None
    except RuntimeError as err:
        if "size mismatch" in str(err):
            first = next(line.strip() for line in str(err).splitlines() if "size mismatch" in line)
            raise InputError(f"{path}: adapter does not fit this base model ({first})") from None
        raise
    return peft_model  # the injection hook has checked every HypLoRA layer (hyplora.adapter.peft_hooks)


def check_adapter_folder(path: str | Path) -> PeftConfig:
    """Check an adapter folder without a base model and return its config; `InputError` names what is wrong.

    The folder must hold `adapter_config.json`, a JSON object without NaN/Infinity that builds a valid config
    (`HypLoraConfig` when `use_hyplora` is true: curvature, form, input scaling), and `adapter_model.safetensors`
    (a pickled `adapter_model.bin` is refused: safetensors only) whose header is intact and whose tensors, at
    least one, are all finite.
    """
    path = Path(path)
    config_file, weights = path / "adapter_config.json", path / SAFETENSORS_WEIGHTS_NAME
    if not config_file.is_file():
        raise InputError(f"{config_file}: no adapter config (expected a folder written by save_pretrained)")

    def refuse_constant(name):
        raise InputError(f"{config_file}: {name} is not a valid JSON number")

    try:
        saved = json.loads(config_file.read_text(), parse_constant=refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise InputError(f"{config_file}: malformed JSON ({getattr(err, 'msg', err)}{where})") from None
    if not isinstance(saved, dict):
        raise InputError(f"{config_file}: must be a JSON object, not a JSON {type(saved).__name__}")
    if not weights.is_file():
        pickled = (path / WEIGHTS_NAME).is_file()
        raise InputError(
            f"{path}: no {SAFETENSORS_WEIGHTS_NAME}"
            + (f" (its {WEIGHTS_NAME} is a pickle: hyplora loads safetensors only)" if pickled else "")
        )
    try:
        config_cls = HypLoraConfig if saved.get("use_hyplora") else PeftConfig
        config = config_cls.from_pretrained(str(path))
    except (ValueError, TypeError, KeyError) as err:
        raise InputError(f"{config_file}: {first_line(err)}") from None
    rank = getattr(config, "r", 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InputError(f"{config_file}: r must be a positive integer, got {rank!r}")
    try:
        with safe_open(weights, framework="pt") as tensors:
            names = list(tensors.keys())
            bad = next((name for name in names if not torch.isfinite(tensors.get_tensor(name)).all()), None)
    except (SafetensorError, OSError) as err:
        raise InputError(f"{weights}: truncated or corrupt ({first_line(err)})") from None
    if not names:
        raise InputError(f"{weights}: holds no tensors")
    if bad is not None:
        raise InputError(f"{weights}: tensor {bad} holds NaN or infinite values (corrupt file or diverged training)")
    return config
