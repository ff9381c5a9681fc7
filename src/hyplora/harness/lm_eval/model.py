"""`hyplora-hf`: lm-eval's Hugging Face model (`HFLM`) with HypLoRA, LoRA or DoRA adapters attached by hyplora.

lm-eval's own `hf` model loads `peft=DIR` with `PeftModel.from_pretrained` in a process that never
imported hyplora, so a HypLoRA adapter does not load there. `HypLoraLM` takes the same model
arguments; it builds the base model with lm-eval's own code (`peft=None`) and then attaches the
adapter with `hyplora.load_adapter`, which reads the config class from `adapter_config.json`.

`pretrained` is anything `hyplora.harness.base_models.load_model` accepts: a Hugging Face id or a
local folder (loaded by lm-eval, so `device`, `dtype`, `parallelize` etc. apply as for `hf`), or a
packaged name (`smollm2-135m`, `gemma3-270m`) or `.gguf` file, which `load_model` converts and loads;
that model is moved to `device` and handed to `HFLM` as an already-built model.
"""

import os

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import get_dtype

from hyplora.adapter.loading import load_adapter
from hyplora.harness.base_models import PACKAGED_MODELS, load_model


def _needs_hyplora_loader(pretrained) -> bool:
    """Packaged names and GGUF files: lm-eval cannot read them, `load_model` can."""
    return isinstance(pretrained, str) and (pretrained in PACKAGED_MODELS or pretrained.lower().endswith(".gguf"))


@register_model("hyplora-hf")
class HypLoraLM(HFLM):
    """`HFLM` whose `peft=` argument may be a HypLoRA, LoRA or DoRA adapter folder (attached via `load_adapter`)."""

    def __init__(self, pretrained, peft: str | None = None, **kwargs) -> None:
        self.adapter_path = peft
        if _needs_hyplora_loader(pretrained):
            dtype = get_dtype(kwargs.pop("dtype", "auto"))
            model, tokenizer = load_model(pretrained, dtype=torch.float32 if dtype == "auto" else dtype)
            device = kwargs.pop("device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
            model = model.to(device)
            if peft:
                model = load_adapter(model, peft)
            kwargs.setdefault("tokenizer", tokenizer)
            super().__init__(pretrained=model, **kwargs)
        else:
            super().__init__(pretrained=pretrained, **kwargs)

    def _create_model(self, pretrained: str, peft: str | None = None, **kwargs) -> None:
        """lm-eval builds the base model (no PEFT); hyplora attaches the adapter."""
        super()._create_model(pretrained, peft=None, **kwargs)
        if self.adapter_path:
            self._model = load_adapter(self._model, self.adapter_path)

    def get_model_info(self) -> dict:
        """lm-eval's record of the model, plus the adapter folder."""
        info = super().get_model_info()
        if self.adapter_path:
            info["adapter"] = os.fspath(self.adapter_path)
        return info
