"""The TRL examples run on a tiny model with TRL's default precision, and TRL's vLLM weight sync refuses HypLoRA."""

import importlib.util
import json
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")

from peft import LoraConfig, get_peft_model  # noqa: E402
from trl.generation.vllm_generation import VLLMGeneration  # noqa: E402

from hyplora import HypLoraConfig, load_adapter  # noqa: E402
from hyplora.harness.base_models import load_model, tiny_model  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY_ADAPTER = ["--rank", "4"]


def example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny_folder(tmp_path, smollm2_tokenizer):
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def trained_adapter_b_norms(output_dir: Path) -> list[float]:
    """|B| of every adapted layer after loading the saved adapter (HypLoRA's B starts at zero)."""
    config = json.loads((output_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "HYPLORA" or config.get("use_hyplora")
    model = load_adapter(load_model(output_dir.parent / "tiny")[0], output_dir)
    return [p.norm().item() for name, p in model.named_parameters() if "lora_B" in name]


def test_sft_example_trains_a_hyplora_adapter_with_trl_defaults(tmp_path, tiny_folder):
    out = tmp_path / "sft"
    argv = ["--model", str(tiny_folder), "--limit", "8", "--max-steps", "2", "--batch-size", "2", "--max-length", "64"]
    trainer = example("trl_sft").main([*argv, *TINY_ADAPTER, "--output-dir", str(out)])
    assert trainer.args.bf16  # TRL's default mixed precision, not forced to fp32
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert trainer.state.global_step == 2 and min(trained_adapter_b_norms(out)) > 0


def test_grpo_example_trains_on_the_correctness_reward_with_hf_generation(tmp_path, tiny_folder):
    out = tmp_path / "grpo"
    argv = ["--model", str(tiny_folder), "--limit", "4", "--max-steps", "2", "--num-generations", "2"]
    argv += ["--batch-size", "2", "--max-completion-length", "4", "--lr", "1e-2", *TINY_ADAPTER]
    trainer = example("trl_grpo").main([*argv, "--output-dir", str(out)])
    assert trainer.args.bf16 and not trainer.args.use_vllm
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    assert len(rewards) == 2 and all(0.0 <= reward <= 1.0 for reward in rewards)
    assert (out / "adapter_model.safetensors").is_file() and len(trained_adapter_b_norms(out)) == 2 * 5


def test_correctness_reward_reads_the_answer_with_the_robust_rules():
    reward = example("trl_grpo").correctness_reward
    completions = ["48/2 = 24 in May, 48+24 = 72. The answer is 72.", "72 clips, or 1,072?", "no idea"]
    assert reward(completions, answer=["72", "1072", "1"]) == [1.0, 1.0, 0.0]


def _trl_vllm_sync(model) -> list[str]:
    """Run TRL's own vLLM weight export (`VLLMGeneration._iter_named_params`) on one process without vLLM."""
    host = SimpleNamespace(
        model=model,
        _dist=SimpleNamespace(gather_params=lambda params: nullcontext(), is_fsdp=False),
        _fix_param_name_to_vllm=lambda name, extra_prefixes=None: VLLMGeneration._fix_param_name_to_vllm(
            None, name, extra_prefixes
        ),
    )
    return [name for name, _ in VLLMGeneration._iter_named_params(host)]


def _randomized(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def test_trl_vllm_weight_sync_stops_with_the_merge_error_and_leaves_the_policy_intact():
    targets = ["q_proj", "v_proj"]
    lora = _randomized(get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=targets)))
    names = _trl_vllm_sync(lora)  # control: the path merges, exports base names, unmerges
    assert "model.layers.0.self_attn.q_proj.weight" in names and not any("lora_" in name for name in names)

    model = _randomized(get_peft_model(tiny_model("llama"), HypLoraConfig(r=4, target_modules=targets)))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(NotImplementedError, match="cannot be merged.*vLLM"):
        _trl_vllm_sync(model)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert not any(getattr(module, "merged", False) for module in model.modules())
