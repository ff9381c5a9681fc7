"""`hyplora train`: option checks, the adapter folder, resume after SIGKILL, and 2-process DDP.

Runs on a tiny random Llama with a word-level tokenizer over the pieces of the prompts (about 80
tokens per example), and a synthetic arithmetic set in the Alpaca schema, so a step is quick.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyplora.cli import build_parser
from hyplora.cli import main as cli_main
from hyplora.cli.options import dataclass_values
from hyplora.errors import InputError
from hyplora.harness.base_models import load_model, tiny_model
from hyplora.harness.training import (
    METHODS,
    PRECISIONS,
    FineTuneRecipe,
    TrainArgs,
    adapter_config,
    last_checkpoint,
    train,
)

SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# Small but real: 2 epochs of 6 steps (48 examples, global batch 8), checkpoints every 4 steps.
TINY_RUN = dict(
    rank=4,
    alpha=8.0,
    lr=1e-2,
    max_steps=12,
    batch_size=8,
    micro_batch_size=4,
    warmup_steps=2,
    val_size=8,
    limit=48,
    cutoff_len=128,
    save_steps=4,
    logging_steps=1,
    seed=3,
)


def _cli_flags(options: dict) -> list[str]:
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def _arithmetic_records() -> list[dict]:
    """64 'What is a plus b?' records with a rationale ending in 'The answer is N'."""
    records = []
    for i in range(64):
        a, b = 7 * i % 50 + 1, 13 * i % 40 + 2
        records.append(
            {
                "instruction": f"What is {a} plus {b}?",
                "input": "",
                "output": f"{a} + {b} = {a + b}. The answer is {a + b}",
                "answer": str(a + b),
            }
        )
    return records


@pytest.fixture(scope="module")
def arithmetic_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "arithmetic.json"
    path.write_text(json.dumps(_arithmetic_records()))
    return path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama and a word-level tokenizer (ids match tiny_model's bos 1 / eos 2), saved as a model folder.

    The vocabulary is every piece (word, number, punctuation mark, whitespace run) of the training
    prompts, so the Alpaca template costs a few dozen tokens instead of hundreds of characters.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from hyplora.harness.prompts import eval_prompt, train_prompt

    pieces_pattern = r"\s+|\w+|[^\w\s]"
    texts = [
        train_prompt(r["instruction"], "", r["output"]) + eval_prompt(r["instruction"]) for r in _arithmetic_records()
    ]
    vocab = ["<unk>", "<s>", "</s>"] + sorted({piece for text in texts for piece in re.findall(pieces_pattern, text)})
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pieces_pattern), "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer.save_pretrained(folder)
    tiny_model("llama", vocab_size=len(vocab)).save_pretrained(folder)
    return folder


def _args(model_dir, data, output_dir, **overrides) -> TrainArgs:
    return TrainArgs(model=str(model_dir), data=str(data), output_dir=str(output_dir), **{**TINY_RUN, **overrides})


# -- option checks (no model is loaded) ------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"method": "vera"}, "--method 'vera' is unknown"),
        ({"method": "lora", "curvature": 2.0}, "--curvature: only for --method hyplora"),
        ({"method": "dora", "learn_curvature": True}, "--learn-curvature: only for --method hyplora"),
        ({"batch_size": 10, "micro_batch_size": 4}, "--batch-size 10 must be a multiple of --micro-batch-size 4"),
        ({"max_steps": 0, "epochs": 0}, "set --epochs > 0 or --max-steps > 0"),
        ({"rank": 0}, "--rank >= 1"),
        ({"resume": True}, "--resume: no complete checkpoint-<step> folder"),
    ],
)
def test_bad_options_fail_before_loading_anything(tmp_path, overrides, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        FineTuneRecipe(_args("unused-model", "unused-data", tmp_path / "run", **overrides))


def test_cli_reports_bad_option_as_one_line(tmp_path, capsys):
    assert cli_main(["train", "--method", "lora", "--curvature", "2", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hyplora train: error: --curvature: only for --method hyplora, not lora"


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    with pytest.raises(InputError, match="already holds a run: pass --resume"):
        FineTuneRecipe(_args("m", "d", tmp_path))


def test_last_checkpoint_skips_folders_cut_off_mid_write(tmp_path):
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({}, folder / "adapter_model.safetensors")
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
    assert last_checkpoint(tmp_path / "absent") is None


def test_every_method_gets_the_same_alpha_and_the_paper_defaults():
    from peft import LoraConfig

    from hyplora import HypLoraConfig

    configs = {method: adapter_config(TrainArgs(method=method)) for method in ("hyplora", "lora", "dora")}
    assert isinstance(configs["hyplora"], HypLoraConfig) and configs["hyplora"].use_hyplora
    assert type(configs["lora"]) is LoraConfig and not configs["lora"].use_dora
    assert configs["dora"].use_dora
    for config in configs.values():
        assert (config.r, config.lora_alpha, config.lora_dropout) == (32, 64.0, 0.05)
        assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "up_proj", "down_proj"}
    defaults = TrainArgs()
    assert (defaults.batch_size, defaults.micro_batch_size, defaults.epochs, defaults.lr) == (16, 4, 3.0, 3e-4)
    assert (defaults.cutoff_len, defaults.warmup_steps, defaults.val_size) == (256, 100, 120)


def test_cli_options_are_the_train_args():
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    actions = {action.dest: action for action in train_parser._actions}
    for option in dataclasses.fields(TrainArgs):
        action = actions[option.name]
        assert action.help.startswith(option.metadata["help"]) and action.default == option.default
        assert action.choices == option.metadata.get("choices")
    assert actions["method"].choices == METHODS and actions["precision"].choices == PRECISIONS
    parsed = train_parser.parse_args(["--target-modules", "q_proj,v_proj", "--no-train-on-inputs"])
    expected = dataclasses.replace(TrainArgs(), target_modules=("q_proj", "v_proj"), train_on_inputs=False)
    assert TrainArgs(**dataclass_values(TrainArgs, parsed)) == expected


def test_bad_curvature_is_an_input_error():
    with pytest.raises(InputError, match="curvature"):
        adapter_config(TrainArgs(curvature=-1.0))


# -- one run in process ----------------------------------------------------------------------------
@pytest.mark.slow
def test_train_writes_a_loadable_adapter_and_lowers_validation_loss(tiny_model_dir, arithmetic_data, tmp_path):
    from PIL import Image

    from hyplora import load_adapter

    out = train(_args(tiny_model_dir, arithmetic_data, tmp_path / "run", learn_curvature=True))
    names = {path.name for path in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "train_args.json",
        "loss_log.jsonl",
        "loss.png",
    } <= names
    assert {"checkpoint-4", "checkpoint-8", "checkpoint-12"} <= names
    with Image.open(out / "loss.png") as plot:
        assert plot.format == "PNG"

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_hyplora"] and config["learn_curvature"] and config["lora_alpha"] == 8.0
    assert config["base_model_name_or_path"] == str(tiny_model_dir)

    record = json.loads((out / "train_args.json").read_text())
    assert record["args"]["method"] == "hyplora" and record["run"]["train_examples"] == 48
    assert record["run"]["val_examples"] == 8 and record["run"]["gradient_accumulation_steps"] == 2
    assert record["result"]["steps"] == 12

    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "loss" in entry] == list(range(1, 13))
    val_losses = [entry["eval_loss"] for entry in log if "eval_loss" in entry]
    assert len(val_losses) >= 3 and val_losses[-1] < val_losses[0]
    assert record["result"]["val_loss"] == pytest.approx(val_losses[-1])

    # the saved adapter reproduces the trained model and differs from the base
    base, tokenizer = load_model(tiny_model_dir)
    batch = tokenizer(["What is 3 plus 4?"], return_tensors="pt")
    with torch.no_grad():
        base_logits = base(**batch).logits
        tuned = load_adapter(base, out)
        tuned_logits = tuned(**batch).logits
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-4)
    saved = load_file(out / "adapter_model.safetensors")
    assert any("curvature" in key for key in saved), "a learned curvature must be saved with the adapter"


# -- resume after SIGKILL --------------------------------------------------------------------------
PAUSING_DRIVER = """
import pathlib, sys, time
from transformers import TrainerCallback
import hyplora.harness.training
from hyplora.cli import main

marker, pause_step = pathlib.Path(sys.argv[1]), int(sys.argv[2])

class PauseAtStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == pause_step:
            marker.touch()
            time.sleep(600)  # the test kills the process here

setup_trainer = hyplora.harness.training.FineTuneRecipe._setup_trainer
def with_pause(self):
    setup_trainer(self)
    self.trainer.add_callback(PauseAtStep())
hyplora.harness.training.FineTuneRecipe._setup_trainer = with_pause
sys.exit(main(sys.argv[3:]))
"""


def _run_cli(argv, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "hyplora.cli", *argv],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


@pytest.mark.slow
def test_resume_after_sigkill_finishes_with_the_uninterrupted_adapter(tiny_model_dir, arithmetic_data, tmp_path):
    common = {
        **TINY_RUN,
        "model": tiny_model_dir,
        "data": arithmetic_data,
    }  # dropout 0.05 stays on: RNG is restored too
    full = _run_cli(["train", *_cli_flags({**common, "output_dir": tmp_path / "full"})])
    assert full.returncode == 0, full.stderr[-3000:]

    # Killed at step 10, two steps after checkpoint-8 and in the second epoch.
    killed_dir, marker = tmp_path / "killed", tmp_path / "paused"
    flags = _cli_flags({**common, "output_dir": killed_dir})
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSING_DRIVER, str(marker), "10", "train", *flags],
        env=SUBPROCESS_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, f"run ended before step 10: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "run never reached step 10"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    proc.stderr.close()
    assert not (killed_dir / "adapter_model.safetensors").exists()
    assert last_checkpoint(killed_dir) == killed_dir / "checkpoint-8"
    logged_steps = [json.loads(line).get("step") for line in (killed_dir / "loss_log.jsonl").read_text().splitlines()]
    assert 9 in logged_steps  # logged after checkpoint-8: the resumed log must drop it
    # a checkpoint folder cut off mid-write (no trainer_state.json) must be skipped
    (killed_dir / "checkpoint-12").mkdir()
    (killed_dir / "checkpoint-12" / "adapter_model.safetensors").write_bytes(b"partial")

    resumed = _run_cli(["train", *flags, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from checkpoint-8" in resumed.stderr  # the hyplora logger, on stderr

    expected, actual = (
        load_file(tmp_path / "full" / "adapter_model.safetensors"),
        load_file(killed_dir / "adapter_model.safetensors"),
    )
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(tensor.abs().max() > 1e-3 for key, tensor in expected.items() if "lora_B" in key)  # it did train

    def train_losses(folder):
        return [
            (e["step"], e["loss"])
            for e in map(json.loads, (folder / "loss_log.jsonl").read_text().splitlines())
            if "loss" in e
        ]

    assert [step for step, _ in train_losses(killed_dir)] == list(range(1, 13))
    torch.testing.assert_close(train_losses(killed_dir), train_losses(tmp_path / "full"), rtol=1e-5, atol=1e-6)
    record = json.loads((killed_dir / "train_args.json").read_text())
    assert record["run"]["resumed_from"].endswith("checkpoint-8")


# -- DDP -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_processes_save_the_single_process_adapter(tiny_model_dir, arithmetic_data, tmp_path):
    # dropout off: the masks depend on the process layout; the data order and loss scaling do not
    options = {**TINY_RUN, "max_steps": 6, "dropout": 0.0, "learn_curvature": True, "gradient_checkpointing": True}
    single = train(_args(tiny_model_dir, arithmetic_data, tmp_path / "single", **options))  # 4 x 2 accumulation

    flags = _cli_flags({**options, "model": tiny_model_dir, "data": arithmetic_data, "output_dir": tmp_path / "ddp"})
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "hyplora.cli",
            "train",
            *flags,
        ],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    record = json.loads((tmp_path / "ddp" / "train_args.json").read_text())
    assert (record["run"]["world_size"], record["run"]["gradient_accumulation_steps"]) == (2, 1)

    expected, actual = (
        load_file(single / "adapter_model.safetensors"),
        load_file(tmp_path / "ddp" / "adapter_model.safetensors"),
    )
    # 2 layers x 5 target modules x (lora_A, lora_B, input scale, curvature)
    assert len(expected) == 40 and actual.keys() == expected.keys()
    q_a = next(key for key in actual if "layers.0.self_attn.q_proj.lora_A" in key)
    assert actual[q_a].shape[0] == 4  # full rank, not a shard
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert any(tensor.abs().max() > 1e-3 for key, tensor in expected.items() if "lora_B" in key)


# -- target modules ---------------------------------------------------------------------------------
def test_target_modules_accept_names_or_one_regular_expression(tiny_model_dir, arithmetic_data, tmp_path):
    from peft import get_peft_model

    pattern = r".*layers\.0\..*(q_proj|v_proj)"
    args = _args(tiny_model_dir, "unused", tmp_path, target_modules=pattern)
    assert args.peft_target_modules == pattern
    assert _args(tiny_model_dir, "unused", tmp_path, target_modules="q_proj, v_proj").peft_target_modules == [
        "q_proj",
        "v_proj",
    ]
    model, _ = load_model(tiny_model_dir)
    adapted = {
        name for name, _ in get_peft_model(model, adapter_config(args)).named_modules() if name.endswith(".lora_A")
    }
    assert adapted == {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A",
        "base_model.model.model.layers.0.self_attn.v_proj.lora_A",
    }

    recipe = FineTuneRecipe(_args(tiny_model_dir, arithmetic_data, tmp_path, target_modules="q_proj,qkv_proj"))
    with pytest.raises(InputError, match="--target-modules qkv_proj: no such layer"):
        recipe.setup()


def test_resume_refuses_changed_adapter_options_and_warns_on_a_new_length(tmp_path):
    args = _args("m", "d", tmp_path)
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    (tmp_path / "train_args.json").write_text(json.dumps({"args": args.to_json()}))
    assert FineTuneRecipe(_args("m", "d", tmp_path, resume=True)).checkpoint == checkpoint
    with pytest.raises(InputError, match="--resume: --rank is 8 but the checkpoint's run used 4"):
        FineTuneRecipe(_args("m", "d", tmp_path, resume=True, rank=8))
    with pytest.warns(UserWarning, match="--max-steps changed from 12 to 20; the new value is used"):
        FineTuneRecipe(_args("m", "d", tmp_path, resume=True, max_steps=20))


def test_data_seed_gives_every_seed_the_same_validation_split(tiny_model_dir, arithmetic_data, tmp_path):
    def split(**overrides):
        recipe = FineTuneRecipe(_args(tiny_model_dir, arithmetic_data, tmp_path / "run", **overrides))
        recipe.setup()
        return [example["input_ids"] for example in recipe.val_dataset], [
            example["input_ids"] for example in recipe.train_dataset
        ]

    val_0, train_0 = split(seed=0)
    val_1, _ = split(seed=1)
    assert val_0 != val_1  # without --data-seed the seed also draws the data
    assert split(seed=1, data_seed=0) == (val_0, train_0)


def test_cli_threads_option_sets_torch_threads_and_refuses_zero(capsys):
    threads = torch.get_num_threads()
    try:
        assert cli_main(["train", "--threads", "0", "--output-dir", "unused"]) == 2
        assert capsys.readouterr().err.strip() == "hyplora train: error: --threads 0: must be positive"
        assert cli_main(["train", "--threads", "1", "--method", "lora", "--curvature", "2"]) == 2
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
