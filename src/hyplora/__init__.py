"""HypLoRA: low-rank adaptation on the Lorentz manifold, as a PEFT LoRA variant.

Importing `hyplora` installs its PEFT hooks (`hyplora.adapter.peft_hooks`) and filters for two third-party
messages a user cannot act on (`hyplora.third_party_messages`). Layout:

- `hyplora.adapter`: the PEFT adapter (Lorentz maths, config, layer, loading, PEFT hooks);
- `hyplora.harness`: the benchmark harness (data, prompts, base models, training, generation, evaluation);
- `hyplora.geometry`: the geometry toolkit (power law, norms vs frequency, Gromov delta);
- `hyplora.cli`: the `hyplora` command.
"""

from hyplora.third_party_messages import silence_unactionable_messages

silence_unactionable_messages()  # before hyplora.adapter imports PEFT, which imports bitsandbytes

from hyplora.adapter import HypLoraConfig, check_hyplora_layers, load_adapter  # noqa: E402

__version__ = "0.1.0"
__all__ = ["HypLoraConfig", "check_hyplora_layers", "load_adapter", "__version__"]
