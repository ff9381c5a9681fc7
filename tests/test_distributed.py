"""`hyplora train` on several CPU processes: FSDP2 really shards and saves the one-process adapter, and the launch
set-ups that would silently train otherwise (FSDP dropped to DDP, one process instead of N) fail in one line.

Same tiny Llama, word-level tokenizer and arithmetic data as tests/test_train.py (its fixtures).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import test_train
import torch
from safetensors.torch import load_file
from test_train import SUBPROCESS_ENV, TINY_RUN, _args, _cli_flags

from hyplora.errors import InputError
from hyplora.harness.training import FineTuneRecipe, train

arithmetic_data, tiny_model_dir = test_train.arithmetic_data, test_train.tiny_model_dir  # its fixtures

# dropout off: the masks depend on the process layout; the data order and loss scaling do not
SHARDED_RUN = {**TINY_RUN, "max_steps": 6, "dropout": 0.0, "learn_curvature": True}
ADAPTER_TENSORS = 40  # 2 layers x 5 target modules x (lora_A, lora_B, input scale, curvature)


def _launch(argv, **env):
    return subprocess.run(
        [sys.executable, *argv], env={**SUBPROCESS_ENV, **env}, capture_output=True, text=True, timeout=300
    )


def _torchrun_train(flags):
    argv = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hyplora.cli", "train"]
    return _launch([*argv, *flags])


# -- one-line refusals (no model is loaded) --------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, env, message",
    [
        ({}, {"ACCELERATE_USE_FSDP": "true"}, "accelerate's FSDP config without a CUDA GPU would train with DDP"),
        ({"fsdp": True}, {"WORLD_SIZE": "2", "ACCELERATE_USE_FSDP": "true"}, "accelerate's FSDP config without"),
        ({"fsdp": True}, {}, "--fsdp shards over the launcher's processes, and this is one"),
        ({"fsdp": True, "precision": "bf16"}, {"WORLD_SIZE": "2"}, None),
        ({"fsdp": True, "resume": True}, {"WORLD_SIZE": "2"}, "--fsdp --resume: Trainer does not checkpoint"),
        ({}, {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"}, "accelerate launch --cpu --num_processes N"),
        ({"precision": "fp16"}, {}, "--precision fp16 needs a GPU"),
    ],
)
def test_launches_that_would_not_shard_fail_in_one_line(tmp_path, monkeypatch, overrides, env, message):
    for name in ("WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = _args("unused-model", "unused-data", tmp_path / "run", batch_size=8, **overrides)
    if message is None:  # a valid sharded launch passes the checks
        assert FineTuneRecipe(args).args.fsdp
        return
    with pytest.raises(InputError, match=message.replace("(", r"\(")) as err:
        FineTuneRecipe(args)
    assert "\n" not in str(err.value)


ACCELERATE = ["-m", "accelerate.commands.launch", "--num_processes", "2"]
RECIPE = Path(__file__).parents[1] / "examples" / "recipes" / "accelerate_fsdp2.yaml"
FSDP2_RECIPE = ["--config_file", str(RECIPE), "--mixed_precision", "no"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, message",
    [
        # its CPU launcher starts one process
        ([*ACCELERATE, "--cpu"], "accelerate launch --cpu --num_processes N started one process"),
        # two processes, but accelerate would drop FSDP on the CPU and run DDP
        ([*ACCELERATE, *FSDP2_RECIPE], "accelerate's FSDP config without a CUDA GPU would train with DDP"),
    ],
)
def test_accelerate_launches_that_would_not_shard_are_refused(tmp_path, launcher, message):
    launched = _launch([*launcher, "-m", "hyplora.cli", "train", "--output-dir", str(tmp_path / "run")])
    assert launched.returncode != 0
    assert f"hyplora train: error: {message}" in launched.stderr
    assert not (tmp_path / "run").exists()


# -- FSDP2 on 2 CPU processes ----------------------------------------------------------------------
def _assert_sharded(run_dir, *, mixed_precision):
    record = json.loads((run_dir / "train_args.json").read_text())
    sharding = record["run"]["sharding"]
    assert record["run"]["world_size"] == 2 and record["args"]["fsdp"]
    # FSDP units: the embeddings, the 2 decoder layers, the final norm with the head, and the root; the base weights
    # are DTensor shards, the adapter (attached after sharding) is replicated and averaged by Trainer
    assert sharding["fsdp_units"] == 5 and sharding["trainable_dtensor_params"] == 0
    assert sharding["dtensor_params"] == sharding["params"] - ADAPTER_TENSORS
    assert sharding["fsdp_mixed_precision"] is mixed_precision


def _adapters(actual_dir, expected_dir):
    expected = load_file(expected_dir / "adapter_model.safetensors")
    actual = load_file(actual_dir / "adapter_model.safetensors")
    assert len(expected) == ADAPTER_TENSORS and actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].shape == expected[key].shape and actual[key].dtype == torch.float32, key
    assert any(tensor.abs().max() > 1e-3 for key, tensor in expected.items() if "lora_B" in key)  # it did train
    return actual, expected


def _train_losses(run_dir):
    log = map(json.loads, (run_dir / "loss_log.jsonl").read_text().splitlines())
    return [(entry["step"], entry["loss"]) for entry in log if "loss" in entry]


@pytest.mark.slow
def test_fsdp2_two_processes_shard_and_save_the_single_process_adapter(tiny_model_dir, arithmetic_data, tmp_path):
    single = train(_args(tiny_model_dir, arithmetic_data, tmp_path / "single", **SHARDED_RUN))  # 4 x 2 accumulation
    flags = _cli_flags(
        {**SHARDED_RUN, "model": tiny_model_dir, "data": arithmetic_data, "output_dir": tmp_path / "fsdp"}
    )
    sharded = _torchrun_train([*flags, "--fsdp"])
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    _assert_sharded(tmp_path / "fsdp", mixed_precision=False)
    actual, expected = _adapters(tmp_path / "fsdp", single)
    for key in expected:  # float32: only the order in which the two processes' gradients are summed differs
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow
def test_fsdp2_bf16_mixed_precision_policy_trains_as_one_bf16_process(tiny_model_dir, arithmetic_data, tmp_path):
    """One process: bf16 weights and bf16 autocast. Two: float32 shards gathered in bf16 (MixedPrecisionPolicy),
    bf16 autocast, float32 gradient averaging. The same bf16 arithmetic, so the first step's loss is the same to the
    last bit; after that bf16 rounding of the gradients, which AdamW turns into whole steps for the small noisy
    components, lets the adapters drift apart (about 10% here) while the loss curves agree to 1e-3."""
    options = {**SHARDED_RUN, "precision": "bf16"}
    single = train(_args(tiny_model_dir, arithmetic_data, tmp_path / "single", **options))
    flags = _cli_flags({**options, "model": tiny_model_dir, "data": arithmetic_data, "output_dir": tmp_path / "fsdp"})
    sharded = _torchrun_train([*flags, "--fsdp"])
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    _assert_sharded(tmp_path / "fsdp", mixed_precision=True)
    got, want = _train_losses(tmp_path / "fsdp"), _train_losses(single)
    assert [step for step, _ in got] == list(range(1, 7)) and got[0] == want[0]
    torch.testing.assert_close(got, want, rtol=1e-3, atol=0)
    actual, expected = _adapters(tmp_path / "fsdp", single)
    for part in ("lora_A", "lora_B"):
        keys = [key for key in expected if part in key]
        got_w, want_w = (torch.cat([weights[key].flatten() for key in keys]) for weights in (actual, expected))
        assert torch.isfinite(got_w).all() and (got_w - want_w).norm() < 0.2 * want_w.norm(), part
