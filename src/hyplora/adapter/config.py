"""`HypLoraConfig`: a `peft.LoraConfig` whose adapters run on the Lorentz manifold."""

from dataclasses import dataclass, field
from typing import Literal

from peft import LoraConfig
from torch import nn

from hyplora.adapter.layer import dispatch_hyplora

INPUT_SCALINGS = ("none", "unit", "rms")
SUPPORTED_INITS = (True, False, "gaussian")
# `peft_type` in a saved HypLoRA `adapter_config.json`: no PEFT method has it, so only a process that imported
# hyplora (which registers it, `hyplora.adapter.peft_hooks`) can load the adapter
SAVED_PEFT_TYPE = "HYPLORA"


@dataclass
class HypLoraConfig(LoraConfig):
    """LoRA config for HypLoRA adapters; every `LoraConfig` field keeps its meaning.

    The saved `adapter_config.json` says `peft_type: "HYPLORA"` (`to_dict`); once `hyplora` is imported, stock
    `PeftModel.from_pretrained`, `AutoPeftModelForCausalLM` and transformers' `load_adapter` load it as HypLoRA,
    as does `hyplora.load_adapter`.
    """

    use_hyplora: bool = field(
        default=True,
        metadata={
            "help": "Run the adapter on the Lorentz manifold (HypLoRA). False gives plain LoRA/DoRA.",
            "is_lora_variant": True,
        },
    )
    curvature: float = field(
        default=1.0,
        metadata={
            "help": "K > 0 of the hyperboloid <x,x>_L = -K (sectional curvature -1/K); the initial value if learned."
        },
    )
    learn_curvature: bool = field(
        default=False,
        metadata={"help": "Train K per adapted layer, kept positive as K = softplus(k); saved with the adapter."},
    )
    input_scaling: Literal["none", "unit", "rms"] = field(
        default="unit",
        metadata={
            "help": (
                "How the layer input x becomes the tangent vector u before the exponential map. 'none': u = x (the "
                "paper's literal form; LLM hidden states saturate the map). 'unit': u = x/max(|x|, 0.01) * min(e^s, 10) (the "
                "first release). 'rms': u = x / (e^s * sqrt(in_features)), i.e. |u| = rms(x)/e^s. s is learned, "
                "initialised to 0. Default 'unit': the lowest held-out loss of the three in benchmarks/input_scaling.py "
                "(see benchmarks/README.md); 'none' diverged there."
            )
        },
    )

    def __post_init__(self):
        super().__post_init__()  # resets _custom_modules: register ours afterwards
        if not self.use_hyplora:
            return
        if not self.curvature > 0:
            raise ValueError(f"`curvature` must be > 0, got {self.curvature}")
        if self.input_scaling not in INPUT_SCALINGS:
            raise ValueError(f"`input_scaling` must be one of {INPUT_SCALINGS}, got {self.input_scaling!r}")
        if self.init_lora_weights not in SUPPORTED_INITS:
            raise ValueError(
                f"`init_lora_weights={self.init_lora_weights!r}` is not supported by HypLoRA: data-driven inits "
                "(pissa, olora, loftq, eva, corda, ...) derive a Euclidean B@A from the base weight, which HypLoRA's "
                f"(in+1)- and (r+1)-dimensional maps cannot use. Use one of {SUPPORTED_INITS}."
            )
        for flag in ("use_dora", "lora_bias", "use_qalora", "use_bdlora", "fan_in_fan_out"):
            if getattr(self, flag, False):
                raise ValueError(f"`{flag}=True` cannot be combined with HypLoRA (`use_hyplora=True`).")
        if self.target_parameters:
            raise ValueError("`target_parameters` is not supported by HypLoRA: target nn.Linear modules instead.")
        self._register_custom_module({nn.Module: dispatch_hyplora})

    def to_dict(self) -> dict:
        """The saved form: `peft_type` is `SAVED_PEFT_TYPE` for a HypLoRA adapter (in memory it stays `LORA`).

        Stock PEFT and transformers without `hyplora` imported then refuse the adapter (`KeyError: 'HYPLORA'`)
        instead of loading its weights as plain LoRA, which would be silent for forms with LoRA's shapes.
        """
        saved = super().to_dict()
        if self.use_hyplora:
            saved["peft_type"] = SAVED_PEFT_TYPE
        return saved

    @classmethod
    def from_peft_type(cls, **kwargs):
        """Build this class from a saved config, whatever its `peft_type`: `HYPLORA`, or `LORA` (with `use_hyplora:
        true`, as hyplora saved adapters before `SAVED_PEFT_TYPE`), which PEFT would map to a plain `LoraConfig`."""
        kwargs.pop("peft_type", None)
        return super().from_peft_type(**kwargs)
