"""Stock loaders (PEFT, transformers) on saved HypLoRA, LoRA and DoRA adapters, each loader in a fresh process.

- after `import hyplora`: every loader gives HypLoRA adapters as `HypLoraConfig` with logits bit-identical to
  `hyplora.load_adapter`, and LoRA/DoRA adapters as plain `LoraConfig`, exactly as stock loads them (which is
  bit-identical to the saved model except DoRA through transformers, which drops DoRA's magnitudes either way);
- without it: every loader refuses a HypLoRA adapter with an error (never a warning and a base or LoRA model),
  with transformers' `ignore_mismatched_sizes=True` too.
"""

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from hyplora import HypLoraConfig, load_adapter
from hyplora.adapter.config import FORM_DEFAULTS, SAVED_PEFT_TYPE
from hyplora.harness.base_models import tiny_model

pytestmark = pytest.mark.slow  # spawns processes

TARGETS = ["q_proj", "v_proj", "down_proj"]
INPUT_IDS = torch.tensor([[1, 17, 250, 3, 999, 42, 7, 8], [1, 5, 6, 7, 8, 9, 10, 11]])
# every form: the seed form's A and B are (in+1) and (r+1) wide; the others have LoRA's shapes, which is what would
# make a silent plain-LoRA load possible
HYPLORA_FORMS = tuple(FORM_DEFAULTS)


def adapter_configs() -> dict:
    configs = {
        f"hyplora-{form}": HypLoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, form=form)
        for form in HYPLORA_FORMS
    }
    configs["lora"] = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS)
    configs["dora"] = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=True)
    return configs


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny base model saved as a folder, adapters of every kind trained on it (randomised), and the logits
    `hyplora.load_adapter` gives for each."""
    root = tmp_path_factory.mktemp("stock")
    base = tiny_model("llama", vocab_size=1024)
    base.save_pretrained(root / "base")
    base = type(base).from_pretrained(root / "base").eval()  # records the folder as the model's name_or_path
    expected = {}
    generator = torch.Generator().manual_seed(0)
    for name, config in adapter_configs().items():
        model = get_peft_model(copy.deepcopy(base), config)
        with torch.no_grad():
            for param_name, param in model.named_parameters():
                noise = 0.1 * torch.randn(param.shape, generator=generator)
                if ".lora_A." in param_name or ".lora_B." in param_name:  # B starts at 0: make the adapter act
                    param.copy_(noise)
                elif "lora_" in param_name:  # the learned scalars (curvature, input scale) and DoRA's magnitudes
                    param.add_(noise * param.abs().clamp(min=1))  # moved off their initial values, signs kept
        model.eval().save_pretrained(root / name)
        with torch.no_grad():
            logits = model(INPUT_IDS).logits
            reloaded = load_adapter(copy.deepcopy(base), root / name)(INPUT_IDS).logits
        assert torch.equal(reloaded, logits)
        assert not torch.equal(logits, base(INPUT_IDS).logits)
        expected[name] = logits
    return root, expected


# each loader puts the adapter in root/<name> on the base model; `kwargs` are extra loader arguments
LOADERS = {
    "PeftModel.from_pretrained": """
        from peft import PeftModel
        base = AutoModelForCausalLM.from_pretrained(root / "base")
        model = PeftModel.from_pretrained(base, root / name, **kwargs)
        config = model.peft_config["default"]
    """,
    "AutoPeftModelForCausalLM": """
        from peft import AutoPeftModelForCausalLM
        model = AutoPeftModelForCausalLM.from_pretrained(root / name, **kwargs)
        config = model.peft_config["default"]
    """,
    "transformers load_adapter": """
        model = AutoModelForCausalLM.from_pretrained(root / "base")
        model.load_adapter(root / name, **kwargs)
        config = model.peft_config["default"]
    """,
    "transformers from_pretrained(adapter)": """
        model = AutoModelForCausalLM.from_pretrained(root / name, **kwargs)
        config = model.peft_config["default"]
    """,
}

SCRIPT = """
import json, sys, warnings
from pathlib import Path
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
root, names, with_hyplora, kwargs = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3] == "1", json.loads(sys.argv[4])
if with_hyplora:
    import hyplora  # noqa: F401
input_ids = torch.tensor({input_ids})
report = {{}}
for name in names:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
{loader}
        except Exception as err:
            report[name] = {{"error": f"{{type(err).__name__}}: {{err}}"}}
            continue
    with torch.no_grad():
        save_file({{"logits": model(input_ids).logits}}, root / f"{{name}}.{{sys.argv[5]}}.safetensors")
    report[name] = {{"config": type(config).__name__, "warnings": [str(w.message) for w in caught]}}
report["hyplora imported"] = "hyplora" in sys.modules
print(json.dumps(report))
"""


def run_loader(root, loader: str, names: list[str], *, with_hyplora: bool, **kwargs) -> dict:
    """Run `loader` on each adapter in `names` in a fresh Python process; its report per adapter."""
    body = textwrap.indent(textwrap.dedent(LOADERS[loader]).strip(), " " * 12)
    script = SCRIPT.format(input_ids=INPUT_IDS.tolist(), loader=body)
    tag = f"{abs(hash(loader))}-{int(with_hyplora)}"
    args = [str(root), ",".join(names), str(int(with_hyplora)), json.dumps(kwargs), tag]
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for name in names:
        if "config" in report[name]:
            report[name]["logits"] = load_file(root / f"{name}.{tag}.safetensors")["logits"]
    return report


@pytest.mark.parametrize("loader", LOADERS)
def test_stock_loader_loads_each_adapter_as_itself_after_import_hyplora_and_refuses_hyplora_without(saved, loader):
    root, expected = saved
    hyp = [name for name in expected if name.startswith("hyplora")]
    with_hyplora = run_loader(root, loader, list(expected), with_hyplora=True)
    # transformers, asked to, loads the base and drops weights whose shapes differ with a warning: the refusal
    # must not depend on shapes (it happens before any weight is read, so this covers the default too)
    permissive = {"ignore_mismatched_sizes": True} if loader.startswith("transformers") else {}
    without = run_loader(root, loader, list(expected), with_hyplora=False, **permissive)
    assert with_hyplora["hyplora imported"] and not without["hyplora imported"]
    for name in hyp:
        assert with_hyplora[name].get("config") == "HypLoraConfig", f"{name}: {with_hyplora[name]}"
        assert torch.equal(with_hyplora[name]["logits"], expected[name]), name
        assert not [w for w in with_hyplora[name]["warnings"] if "Unexpected keyword arguments" in w], name
        assert SAVED_PEFT_TYPE in without[name].get("error", ""), f"{name} without hyplora: {without[name]}"
    for name in ("lora", "dora"):  # hyplora leaves them exactly as stock loads them
        for report in (with_hyplora, without):
            assert report[name].get("config") == "LoraConfig", f"{name}: {report[name]}"
        assert torch.equal(with_hyplora[name]["logits"], without[name]["logits"]), name
    assert torch.equal(with_hyplora["lora"]["logits"], expected["lora"])
    if not loader.startswith("transformers"):
        # transformers 5.24's load_adapter drops DoRA's magnitude vectors (its report lists them as MISSING and
        # UNEXPECTED keys), with or without hyplora: a stock defect outside this check
        assert torch.equal(with_hyplora["dora"]["logits"], expected["dora"])


def test_saved_config_names_its_type_and_base(saved):
    root, _ = saved
    for form in HYPLORA_FORMS:
        config = json.loads((root / f"hyplora-{form}" / "adapter_config.json").read_text())
        assert config["peft_type"] == SAVED_PEFT_TYPE and config["use_hyplora"] is True
        assert config["base_model_name_or_path"] == str(root / "base")
    assert json.loads((root / "lora" / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_adapters_saved_with_peft_type_lora_still_load_through_hyplora(saved, tmp_path):
    """hyplora saved HypLoRA adapters as `peft_type: LORA` (with `use_hyplora: true`) before it saved `HYPLORA`."""
    root, expected = saved
    for form in HYPLORA_FORMS:
        old = tmp_path / form
        old.mkdir()
        config = json.loads((root / f"hyplora-{form}" / "adapter_config.json").read_text())
        (old / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))
        save_file(load_file(root / f"hyplora-{form}" / "adapter_model.safetensors"), old / "adapter_model.safetensors")
        base = type(tiny_model("llama", vocab_size=1024)).from_pretrained(root / "base").eval()
        model = load_adapter(base, old)
        assert isinstance(model.peft_config["default"], HypLoraConfig)
        with torch.no_grad():
            assert torch.equal(model(INPUT_IDS).logits, expected[f"hyplora-{form}"])
