"""Bad input, faults and races (issue 14): each ends in one line naming the culprit, exit 2, and nothing written lost.

Every case goes through `hyplora.cli.main` in-process (or the public API where the fault is a race or a
damaged file), on a tiny random Llama saved with the SmolLM2 tokenizer. One tiny HypLoRA run (2 steps,
a checkpoint per step) is trained once per module and copied where a case needs a finished run.
"""

import copy
import errno
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyplora import HypLoraConfig
from hyplora.adapter.loading import check_adapter_folder
from hyplora.cli import main
from hyplora.errors import InputError
from hyplora.harness import evaluation
from hyplora.harness.base_models import tiny_model
from hyplora.harness.data import answer_format, load_train_set
from hyplora.harness.evaluation import merge_items, read_items
from hyplora.harness.training import FineTuneRecipe, TrainArgs, last_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def _records(answers) -> list[dict]:
    return [
        {"instruction": f"What is {i} plus {i}?", "input": "", "output": f"The answer is {a}.", "answer": str(a)}
        for i, a in enumerate(answers)
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory, smollm2_tokenizer) -> dict[str, Path]:
    """A tiny model folder, a numeric training file, and one finished 2-step HypLoRA run (checkpoint-1, -2)."""
    root = tmp_path_factory.mktemp("bad-input")
    model = root / "tiny"
    tiny_model("llama").save_pretrained(model)
    copy.deepcopy(smollm2_tokenizer).save_pretrained(model)
    data = root / "arithmetic.json"
    data.write_text(json.dumps(_records(range(8))))
    run = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(train_argv(model, data, run)) == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "model": model, "data": data, "run": run}


def train_argv(model, data, output_dir, *extra) -> list[str]:
    tiny = "--rank 2 --alpha 4 --max-steps 2 --batch-size 2 --micro-batch-size 2 --warmup-steps 0 --val-size 2"
    tiny += " --limit 4 --cutoff-len 48 --save-steps 1 --logging-steps 1"
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output-dir",
        str(output_dir),
        *tiny.split(),
        *extra,
    ]


def eval_argv(model, output_dir, *extra, datasets="svamp") -> list[str]:
    tiny = "--limit 2 --batch-size 2 --mode robust --max-new-tokens 2"
    return [
        "eval",
        "--model",
        str(model),
        "--datasets",
        datasets,
        "--output-dir",
        str(output_dir),
        *tiny.split(),
        *extra,
    ]


def error_line(capsys, code: int, argv: list[str], *culprits: str, status: int = 2) -> str:
    """Run `argv`; assert the exit status, no traceback, and exactly one `hyplora <verb>:` line naming `culprits`."""
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    prefix = f"hyplora {argv[0]}:"  # Trainer's progress bar may still hold the line the message starts on
    lines = [line[line.index(prefix) :] for line in err.splitlines() if prefix in line]
    assert len(lines) == 1, err
    for culprit in culprits:
        assert culprit in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ----------------------------------------------------------------------------- train: options, before any load
@pytest.mark.parametrize(
    "extra, culprit",
    [
        (["--alpha", "nan"], "--alpha nan"),
        (["--alpha", "inf"], "--alpha inf"),
        (["--dropout", "nan"], "--dropout nan"),
        (["--lr", "inf"], "--lr inf"),
        (["--lr", "nan"], "--lr nan"),
        (["--lr=-1e-3"], "--lr -0.001"),
        (["--lr", "0"], "--lr 0"),
        (["--curvature", "inf"], "--curvature inf"),
        (["--curvature", "nan"], "--curvature nan"),
        (["--curvature", "-1"], "`curvature` must be a finite number > 0"),
        (["--curvature", "1e-300"], "outside float32's range"),
        (["--curvature", "1e-300", "--learn-curvature"], "outside float32's range"),
        (["--curvature", "710", "--learn-curvature"], "cannot be learned"),
        (["--form", "llr-official", "--input-scaling", "unit"], "input_scaling"),
        (["--warmup-steps", "-1"], "--warmup-steps -1"),
        (["--logging-steps", "0"], "--logging-steps 0"),
        (["--save-steps", "0"], "--save-steps 0"),
        (["--eval-steps", "0"], "--eval-steps 0"),
        (["--cutoff-len", "0"], "--cutoff-len 0"),
        (["--save-total-limit", "0"], "--save-total-limit 0"),
    ],
)
def test_train_refuses_bad_numbers_before_loading_anything(tmp_path, capsys, extra, culprit):
    out = tmp_path / "run"
    error_line(capsys, 2, train_argv(tmp_path / "no-model", tmp_path / "no-data.json", out, *extra), culprit)
    assert not out.exists()


def test_infinite_epochs_are_refused(tmp_path):
    with pytest.raises(InputError, match="--epochs inf: must be a finite number"):
        FineTuneRecipe(TrainArgs(epochs=math.inf, output_dir=str(tmp_path / "run")))


def test_learnable_curvature_round_trips_up_to_700():
    assert HypLoraConfig(target_modules=["q_proj"], curvature=700.0, learn_curvature=True).curvature == 700.0
    with pytest.raises(ValueError, match="lora_alpha"):
        HypLoraConfig(target_modules=["q_proj"], lora_alpha=math.nan)


def test_train_and_analyze_refuse_an_output_dir_that_is_a_file_before_loading(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    error_line(capsys, 2, train_argv(tmp_path / "no-model", tmp_path / "d.json", taken / "run"), "is not a folder")
    error_line(capsys, 2, ["analyze", "--model", str(tmp_path / "no-model"), "--output-dir", str(taken)], "taken")
    error_line(capsys, 2, eval_argv(tmp_path / "no-model", taken), "is not a folder")
    assert taken.read_text() == "keep me"


def test_train_and_analyze_refuse_a_read_only_output_dir(tmp_path, capsys, monkeypatch):
    def read_only(*args, **kwargs):  # root ignores chmod: fail the probe file as a read-only mount would
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    error_line(capsys, 2, train_argv(tmp_path / "no-model", tmp_path / "d.json", tmp_path / "run"), "Read-only")
    error_line(capsys, 2, ["analyze", "--model", "no-model", "--output-dir", str(tmp_path / "a")], "Read-only")


# ----------------------------------------------------------------------------- train: data and model
def test_an_ambiguous_data_file_is_refused_naming_the_record(tmp_path, capsys):
    data = tmp_path / "mixed.json"
    data.write_text(json.dumps(_records([3, 5, "four", 7])))
    argv = train_argv(tmp_path / "no-model", data, tmp_path / "run")  # the data is read before the model loads
    line = error_line(capsys, 2, argv, "mixed.json", "record 2", "four")
    assert "--domain" in line
    assert load_train_set(str(data), domain="math", against=[]).domains[str(data)] == "math"


def test_train_refuses_an_embedding_target_and_an_absent_target(files, tmp_path, capsys):
    argv = train_argv(files["model"], files["data"], tmp_path / "run", "--target-modules", "embed_tokens")
    error_line(capsys, 2, argv, "embed_tokens (Embedding)", "nn.Linear")
    argv = train_argv(files["model"], files["data"], tmp_path / "run2", "--target-modules", "q_projx")
    error_line(capsys, 2, argv, "q_projx")


def test_a_diverging_run_stops_with_an_error_and_saves_no_adapter(files, tmp_path, capsys):
    out = tmp_path / "run"
    error_line(capsys, 2, train_argv(files["model"], files["data"], out, "--alpha", "1e38"), "training diverged")
    assert not (out / "adapter_model.safetensors").exists() and not (out / "adapter_config.json").exists()
    assert not list(out.glob("checkpoint-*"))  # the first step diverged: no checkpoint holds NaN weights


def test_a_second_train_into_a_busy_folder_is_refused(files, tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "run"
    out.mkdir()
    with FileLock(str(out / ".train.lock")):  # what a running `hyplora train` holds
        error_line(capsys, 2, train_argv(files["model"], files["data"], out), "another hyplora train")
    assert [path.name for path in out.iterdir()] == [".train.lock"]


def test_a_finished_run_records_finite_json(files):
    config = (files["run"] / "adapter_config.json").read_text()
    json.loads(config, parse_constant=lambda name: pytest.fail(f"adapter_config.json holds {name}"))
    result = json.loads((files["run"] / "train_args.json").read_text())["result"]
    assert result["steps"] == 2 and result["train_loss"] > 0


def test_resume_of_a_finished_run_is_refused_and_changes_nothing(files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    before = snapshot(run)
    error_line(capsys, 2, train_argv(files["model"], files["data"], run, "--resume"), "finished at step 2")
    assert snapshot(run) == before


def test_resume_falls_back_past_a_truncated_trainer_state(files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    state = run / "checkpoint-2" / "trainer_state.json"
    state.write_text(state.read_text()[:40])
    assert main(train_argv(files["model"], files["data"], run, "--resume", "--max-steps", "3")) == 0
    err = capsys.readouterr().err
    assert "skipping checkpoint-2 (trainer_state.json is truncated or not JSON); resuming from checkpoint-1" in err
    record = json.loads((run / "train_args.json").read_text())
    assert record["run"]["resumed_from"].endswith("checkpoint-1") and record["result"]["steps"] == 3


@pytest.mark.parametrize("damaged", ["optimizer.pt", "scheduler.pt", "adapter_model.safetensors"])
def test_last_checkpoint_skips_a_truncated_file(files, tmp_path, caplog, damaged):
    run = tmp_path / "run"
    shutil.copytree(files["run"], run, ignore=shutil.ignore_patterns("*.png"))
    target = run / "checkpoint-2" / damaged
    target.write_bytes(target.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="hyplora"):
        assert last_checkpoint(run) == run / "checkpoint-1"
    assert f"checkpoint-2 ({damaged}" in caplog.text


# ----------------------------------------------------------------------------- adapters
def _adapter(files, tmp_path, name="adapter") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(files["run"] / file, folder / file)
    return folder


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **changes}))


def _no_tensors(folder):
    save_file({}, folder / "adapter_model.safetensors")


def _nan_tensor(folder):
    tensors = load_file(folder / "adapter_model.safetensors")
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], math.nan)
    save_file(tensors, folder / "adapter_model.safetensors")


def _only_pickle(folder):
    torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()


def _truncated(folder):
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])


def _json_array(folder):
    (folder / "adapter_config.json").write_text("[1, 2]")


def _nan_alpha(folder):
    text = (folder / "adapter_config.json").read_text()
    (folder / "adapter_config.json").write_text(text.replace('"lora_alpha": 4', '"lora_alpha": NaN'))


@pytest.mark.parametrize(
    "damage, culprit",
    [
        (_no_tensors, "holds no tensors"),
        (_nan_tensor, "NaN or infinite"),
        (_only_pickle, "is a pickle"),
        (lambda f: (f / "adapter_model.safetensors").unlink(), "no adapter_model.safetensors"),
        (_truncated, "truncated or corrupt"),
        (lambda f: (f / "adapter_config.json").unlink(), "no adapter config"),
        (lambda f: (f / "adapter_config.json").write_text('{"r": '), "malformed JSON"),
        (_json_array, "must be a JSON object"),
        (_nan_alpha, "NaN is not a valid JSON number"),
        (lambda f: _edit_config(f, curvature=-1.0), "`curvature` must be a finite number > 0"),
        (lambda f: _edit_config(f, input_scaling="cubic"), "input_scaling"),
        (lambda f: _edit_config(f, form="cubic"), "`form` must be one of"),
        (lambda f: _edit_config(f, curvature="1.0"), "got '1.0'"),
        (lambda f: _edit_config(f, r=-1), "r must be a positive integer"),
        (lambda f: shutil.rmtree(f), "adapter_config.json: no adapter config"),
    ],
)
def test_eval_refuses_a_bad_adapter_before_loading_the_model(files, tmp_path, capsys, damage, culprit):
    adapter = _adapter(files, tmp_path)
    damage(adapter)
    out = tmp_path / "eval"
    # the model does not exist: the adapter's error shows it was checked first
    error_line(capsys, 2, eval_argv(tmp_path / "no-model", out, "--adapter", str(adapter)), str(adapter.name), culprit)
    assert not out.exists()


def test_a_config_key_of_a_newer_version_loads_with_a_warning(files, tmp_path):
    adapter = _adapter(files, tmp_path)
    _edit_config(adapter, option_of_a_later_release=3)
    with pytest.warns(UserWarning, match="option_of_a_later_release"):
        assert isinstance(check_adapter_folder(adapter), HypLoraConfig)


def test_eval_refuses_an_adapter_whose_targets_the_model_lacks(files, tmp_path, capsys):
    adapter = _adapter(files, tmp_path)
    _edit_config(adapter, target_modules=["gate_projx"])
    error_line(capsys, 2, eval_argv(files["model"], tmp_path / "eval", "--adapter", str(adapter)), "does not fit")


# ----------------------------------------------------------------------------- base models and the cache
def test_eval_refuses_a_model_missing_weights_or_with_a_truncated_file(files, tmp_path, capsys):
    no_embeddings = tmp_path / "no-embeddings"
    shutil.copytree(files["model"], no_embeddings)
    weights = load_file(no_embeddings / "model.safetensors")
    del weights["model.embed_tokens.weight"]
    save_file(weights, no_embeddings / "model.safetensors", metadata={"format": "pt"})
    error_line(capsys, 2, eval_argv(no_embeddings, tmp_path / "e1"), "no-embeddings", "model.embed_tokens.weight")
    truncated = tmp_path / "truncated"
    shutil.copytree(files["model"], truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    error_line(capsys, 2, eval_argv(truncated, tmp_path / "e2"), "truncated", "cannot load")


def test_a_corrupt_or_unwritable_model_cache_is_one_line(files, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(files["model"], cache / "models" / "smollm2-135m")
    weights = cache / "models" / "smollm2-135m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    monkeypatch.setenv("HYPLORA_CACHE", str(cache))
    error_line(capsys, 2, eval_argv("smollm2-135m", tmp_path / "e1"), "smollm2-135m", "cannot load")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("HYPLORA_CACHE", str(blocked))
    error_line(capsys, 2, eval_argv("smollm2-135m", tmp_path / "e2"), "cannot write the model cache", "HYPLORA_CACHE")


# ----------------------------------------------------------------------------- eval: data, results, faults
def test_eval_refuses_an_ambiguous_test_file_unless_told_its_format(files, tmp_path, capsys):
    data = tmp_path / "mine.json"
    data.write_text(json.dumps(_records([3, 5, "four"])))
    argv = eval_argv(tmp_path / "no-model", tmp_path / "e", datasets=str(data))  # --limit 2: record 2 still counts
    line = error_line(capsys, 2, argv, "mine.json", "record 2", "'four'")
    assert "--answer-format" in line
    error_line(capsys, 2, argv + ["--answer-format", "number"], "record 2", "is not a number")
    assert answer_format(str(data), _records([3, 5, "four"]), "label").domain == "commonsense"
    with pytest.raises(InputError, match="svamp: its answers are numbers"):
        answer_format("svamp", kind="label")


def test_results_of_other_settings_survive_in_the_same_folder(files, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(eval_argv(files["model"], out)) == 0
    first = read_items(out / "svamp.jsonl")
    assert main(eval_argv(files["model"], out, "--adapter", str(files["run"]))) == 0
    assert main(eval_argv(files["model"], out, "--max-new-tokens", "3")) == 0
    items = read_items(out / "svamp.jsonl")
    assert len(items) == 6 and len({item["settings_key"] for item in items}) == 3
    assert all(item in items for item in first)
    capsys.readouterr()


_WRITER = """
import sys
from hyplora.harness.evaluation import merge_items
path, key = sys.argv[1], sys.argv[2]
for index in range(40):
    merge_items(path, [{"index": index, "settings_key": key, "prompt_hash": "h", "output": key}])
"""


def test_concurrent_writers_lose_no_items(tmp_path):
    path = tmp_path / "svamp.jsonl"
    merge_items(path, [{"index": 0, "settings_key": "earlier", "prompt_hash": "h", "output": ""}])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), key], env=env, cwd=ROOT) for key in ("a", "b")
    ]
    assert [writer.wait(timeout=120) for writer in writers] == [0, 0]
    keys = sorted((item["settings_key"], item["index"]) for item in read_items(path))
    assert keys == sorted([("earlier", 0)] + [(key, i) for key in ("a", "b") for i in range(40)])
    assert [item["index"] for item in read_items(path) if item["settings_key"] == "a"] == list(range(40))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_ctrl_c_during_eval_keeps_finished_items(files, tmp_path, capsys, monkeypatch):
    real = evaluation.generate_batched

    def interrupt_after_first_batch(model, prompts, **kwargs):
        on_batch = kwargs["on_batch"]

        def then_stop(indices, outputs):
            on_batch(indices, outputs)
            raise KeyboardInterrupt

        real(model, prompts, **{**kwargs, "on_batch": then_stop})

    monkeypatch.setattr(evaluation, "generate_batched", interrupt_after_first_batch)
    out = tmp_path / "eval"
    argv = eval_argv(files["model"], out, "--batch-size", "1")
    error_line(capsys, 130, argv, "interrupted, 1 items kept", status=130)
    assert len(read_items(out / "svamp.jsonl")) == 1


def test_a_full_disk_is_one_line_and_keeps_earlier_results(files, tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval"
    assert main(eval_argv(files["model"], out)) == 0
    before = snapshot(out)
    capsys.readouterr()

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    error_line(capsys, 2, eval_argv(files["model"], out, "--max-new-tokens", "3"), "No space left", "svamp.jsonl")
    assert snapshot(out) == before  # no temporary file, nothing half-written
