"""`HypLoraConfig`: a `peft.LoraConfig` whose adapters run on the Lorentz manifold."""

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from peft import LoraConfig
from torch import nn

from hyplora.adapter import forms
from hyplora.adapter.layer import dispatch_hyplora

# form -> (input scalings it accepts, the first its default; default curvature K; learn K by default)
FORM_DEFAULTS = {
    "seed": (("unit", "none", "rms"), 1.0, False),
    "llr": (("rms", "none", "unit"), 1.0, False),
    "llr-official": (("release",), forms.RELEASE_DEFAULT_K, True),  # the release learns k; hyplora-1.0
    "stereographic": (("none",), 1.0, True),  # the release learns its raw k
}
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
    form: Literal["seed", "llr", "llr-official", "stereographic"] = field(
        default="seed",
        metadata={
            "help": (
                "Which adapter. 'seed': the first release (arXiv:2410.04010 v1): A (r, in+1) and B (out, r+1) act on "
                "Lorentz points, 2 extra columns' worth of parameters. 'llr': the NeurIPS 2025 direct Lorentz "
                "low-rank transformation with one consistent K, LoRA's shapes: sqrt(K) asinh(|y|/sqrt(K)) y/|y|, "
                "y = B A expmap0(u)_s. 'llr-official': that release's code as it computes it (K = softplus(k) + "
                "1e-6, its clamps, a lift with +1/K), for reproducing its tables. 'stereographic': that release's "
                "hyplora_simplified, 2x/(1+k|x|^2) before A and y/(1 + sqrt(|k|) sqrt(|y|^2 + k)) after B, raw k. "
                "Formulas: hyplora.adapter.forms; choice and costs: README."
            )
        },
    )
    curvature: float | None = field(
        default=None,
        metadata={
            "help": (
                "K > 0 of the hyperboloid <x,x>_L = -K (sectional curvature -1/K) in every form; the initial value "
                "if learned. Default 1.0, except 'llr-official': 1.3133 = softplus(1) + 1e-6, the release's "
                "'hyplora-1.0' (its suffix is k, not K)."
            )
        },
    )
    learn_curvature: bool | None = field(
        default=None,
        metadata={
            "help": (
                "Train K per adapted layer; saved with the adapter. 'seed', 'llr': K = softplus(k), default off. "
                "'llr-official': K = softplus(k) + 1e-6 with dL/dk clamped to +-0.01, default on. 'stereographic': "
                "K = k, unconstrained as in the release, default on."
            )
        },
    )
    input_scaling: Literal["none", "unit", "rms", "release"] | None = field(
        default=None,
        metadata={
            "help": (
                "How the layer input x becomes the tangent vector u before the exponential map. 'none': u = x (the "
                "paper's literal form; LLM hidden states saturate the map). 'unit': u = x/max(|x|, 0.01) * min(e^s, "
                "10) (the first release). 'rms': u = x / (e^s * sqrt(in_features)), i.e. |u| = rms(x)/e^s, the "
                "second release's |x|/s' with s' = e^s sqrt(in). s is learned, initialised to 0. 'release' "
                "('llr-official' only, its one choice): u = x/s with the release's raw s, initialised to sqrt(in). "
                "'stereographic' takes 'none' only. Default: 'unit' for 'seed' (the lowest held-out loss of the "
                "three in benchmarks/input_scaling.py, see benchmarks/README.md; 'none' diverged there), 'rms' for "
                "'llr', the release's own for the other two."
            )
        },
    )

    def __post_init__(self):
        super().__post_init__()  # resets _custom_modules: register ours afterwards
        if self.form not in FORM_DEFAULTS:
            raise ValueError(f"`form` must be one of {tuple(FORM_DEFAULTS)}, got {self.form!r}")
        scalings, curvature, learn = FORM_DEFAULTS[self.form]
        self.curvature = curvature if self.curvature is None else self.curvature
        self.learn_curvature = learn if self.learn_curvature is None else self.learn_curvature
        self.input_scaling = scalings[0] if self.input_scaling is None else self.input_scaling
        if not self.use_hyplora:
            return
        self._check_curvature()
        if not (isinstance(self.lora_alpha, (int, float)) and math.isfinite(self.lora_alpha)):
            raise ValueError(f"`lora_alpha` must be a finite number, got {self.lora_alpha!r}")
        if self.input_scaling not in scalings:
            raise ValueError(
                f"`input_scaling` must be one of {scalings} for form={self.form!r}, got {self.input_scaling!r}"
            )
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

    def _check_curvature(self) -> None:
        """K must be a finite float32 number > 0, and a learned K must survive k = raw_from_curvature(K) and back
        (`forms.curvature_from_raw` in float32) to 0.1%: e.g. K > 709 overflows `math.expm1`, and K = 1e-300 is 0."""
        value = self.curvature
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"`curvature` must be a finite number > 0, got {value!r}")
        if not 0 < float(torch.tensor(value, dtype=torch.float32)) < math.inf:
            raise ValueError(f"`curvature` {value:g} is outside float32's range (about 1.2e-38 to 3.4e38)")
        if self.learn_curvature:
            try:
                raw = forms.raw_from_curvature(self.form, float(value))
                back = float(forms.curvature_from_raw(self.form, torch.tensor([raw], dtype=torch.float32)))
            except (OverflowError, ValueError):
                back = math.nan
            if not abs(back - value) <= 1e-3 * value:
                raise ValueError(
                    f"`curvature` {value:g} cannot be learned by form {self.form!r}: its raw parameter k does not "
                    f"represent it in float32 (K = {back:g} after the round trip); choose K in about [1e-6, 700]"
                )

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
        kwargs["peft_type"] = SAVED_PEFT_TYPE  # PEFT's registry maps it to this class, also in its retry without
        return super().from_peft_type(**kwargs)  # keys of a newer version (popping it made that retry fail)
