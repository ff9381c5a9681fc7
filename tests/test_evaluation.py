"""Evaluation (`hyplora.harness.evaluation`): options, reports, reuse on re-run, the settings key, the CLI, bad input."""

import copy
import dataclasses
import json

import pytest
import torch

from hyplora.cli import build_parser, main
from hyplora.errors import InputError
from hyplora.harness import evaluation as ev
from hyplora.harness import generation
from hyplora.harness.base_models import tiny_model
from hyplora.harness.data import load_test_set, load_train_set
from hyplora.harness.evaluation import EvalOptions, evaluate, file_label, read_items
from hyplora.harness.extraction import MODES, extract_answer, is_correct
from hyplora.harness.prompts import TEMPLATES, eval_prompt

pytestmark = pytest.mark.usefixtures("one_thread")


def run_eval(model, tokenizer, datasets, *, run_info=None, **options) -> dict:
    """`evaluate` with the options given as keywords."""
    return evaluate(model, tokenizer, EvalOptions(datasets, **options), run_info=run_info)


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        call(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_generation_runs_in_eval_mode_and_restores_training_mode(tiny_llama, smollm2_tokenizer, tmp_path):
    tiny_llama.train()
    modes = []
    tiny_llama.register_forward_hook(lambda module, args, output: modes.append(module.training))
    run_eval(
        tiny_llama,
        smollm2_tokenizer,
        ["svamp"],
        limit=2,
        batch_size=2,
        mode="robust",
        output_dir=tmp_path,
        max_new_tokens=2,
        progress=False,
    )
    assert modes and not any(modes)
    assert tiny_llama.training


def test_only_a_new_robust_rules_version_changes_the_cache_key(monkeypatch):
    key = {mode: ev.settings_key("f", mode=mode, num_beams=1, max_new_tokens=8) for mode in MODES}
    monkeypatch.setattr(ev, "ROBUST_RULES_VERSION", ev.ROBUST_RULES_VERSION + 1)
    assert ev.settings_key("f", mode="robust", num_beams=1, max_new_tokens=8) != key["robust"]  # cached cuts are stale
    assert ev.settings_key("f", mode="paper", num_beams=1, max_new_tokens=8) == key["paper"]


def _tiny_hyplora():
    """A tiny Llama with a HypLoRA adapter initialised away from the identity."""
    from peft import get_peft_model

    from hyplora import HypLoraConfig

    config = HypLoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    return get_peft_model(tiny_model("llama"), config).eval()


# ----------------------------------------------------------------------------- reports and reuse
def test_reports_and_reuse_of_finished_items(tiny_llama, smollm2_tokenizer, tmp_path, monkeypatch):
    kwargs = dict(
        limit=3,
        batch_size=2,
        mode="paper",
        output_dir=tmp_path,
        max_new_tokens=3,
        num_beams=2,
        progress=False,
        run_info={"model": "tiny"},
    )
    summary = run_eval(tiny_llama, smollm2_tokenizer, ["svamp", "boolq"], **kwargs)
    assert set(summary["datasets"]) == {"svamp", "boolq"}
    svamp = read_items(tmp_path / "svamp.jsonl")
    assert [item["index"] for item in svamp] == [0, 1, 2]
    for item in svamp:
        assert {"prompt", "output", "prediction", "gold", "correct"} <= item.keys()
        assert item["correct"] == is_correct(extract_answer(item["output"], "svamp"), item["gold"], "svamp")
    assert svamp[0]["gold"] == "8.0" and svamp[0]["prompt"].startswith("Below is an instruction")
    stats = summary["datasets"]["svamp"]
    assert (stats["count"], stats["generated"], stats["reused"]) == (3, 3, 0)
    assert summary["weighted_mean"] == pytest.approx(sum(r["correct"] for r in summary["datasets"].values()) / 6)
    assert summary["macro_mean"] == pytest.approx(sum(r["accuracy"] for r in summary["datasets"].values()) / 2)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    table = (tmp_path / "results.md").read_text()
    assert "| svamp |" in table and "macro mean" in table and "weighted mean" in table
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp*"))

    def no_generation(*args, **kwargs):
        raise AssertionError("a finished item was generated again")

    monkeypatch.setattr(generation, "generate_beam", no_generation)
    monkeypatch.setattr(generation, "generate_greedy", no_generation)
    again = run_eval(tiny_llama, smollm2_tokenizer, ["svamp", "boolq"], **kwargs)
    assert again["datasets"]["svamp"]["generated"] == 0 and again["datasets"]["svamp"]["reused"] == 3
    assert read_items(tmp_path / "svamp.jsonl") == svamp
    with pytest.raises(AssertionError, match="generated again"):  # other settings: another key
        run_eval(tiny_llama, smollm2_tokenizer, ["svamp"], **{**kwargs, "max_new_tokens": 4})


def test_scores_and_means_from_known_outputs(tiny_llama, smollm2_tokenizer, tmp_path, monkeypatch):
    tokenizer = smollm2_tokenizer
    yes_no = tmp_path / "yes_no.json"
    yes_no.write_text(
        json.dumps(
            [{"instruction": "Is ice cold?", "answer": "true"}, {"instruction": "Is fire cold?", "answer": "false"}]
        )
    )
    golds = {eval_prompt(r["instruction"]): (i, r["answer"]) for i, r in enumerate(load_test_set("svamp", 4))}
    golds.update({eval_prompt(r["instruction"]): (0, r["answer"]) for r in json.loads(yes_no.read_text())})

    def known_outputs(model, prompts, **kwargs):  # svamp: even items right, odd ones without a number; yes_no: right
        outputs = []
        for ids in prompts:
            index, gold = golds[tokenizer.decode(ids)]
            text = f" The answer is {gold}." if index % 2 == 0 else " I do not know."
            outputs.append(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])
        return outputs

    monkeypatch.setattr(generation, "generate_greedy", known_outputs)
    summary = run_eval(
        tiny_llama,
        tokenizer,
        ["svamp", str(yes_no)],
        limit=4,
        batch_size=3,
        mode="robust",
        output_dir=tmp_path / "out",
        progress=False,
    )
    label = file_label(str(yes_no))
    assert summary["datasets"][label]["domain"] == "commonsense" and summary["datasets"][label]["max_new_tokens"] == 32
    assert [(r["correct"], r["count"]) for r in summary["datasets"].values()] == [(2, 4), (2, 2)]
    assert summary["macro_mean"] == pytest.approx(0.75) and summary["weighted_mean"] == pytest.approx(4 / 6)
    items = read_items(tmp_path / "out" / "svamp.jsonl")
    assert [item["correct"] for item in items] == [True, False, True, False]
    assert items[0]["prediction"] == float(items[0]["gold"]) and items[1]["prediction"] is None
    assert "| svamp | 50.0 | 2 | 4 |" in (tmp_path / "out" / "results.md").read_text()


@pytest.mark.parametrize(
    "answers,domain",
    [
        (["yes", "no"], "commonsense"),
        (["true", "false"], "commonsense"),
        (["answer1", "answer2"], "commonsense"),
        (["3", "-1.5"], "math"),
        (["B", "E"], "math"),
    ],
)
def test_training_and_evaluation_agree_on_a_files_domain(tiny_llama, smollm2_tokenizer, tmp_path, answers, domain):
    path = tmp_path / "set.json"
    records = [
        {"instruction": f"Question {i}?", "output": f"The answer is {a}.", "answer": a} for i, a in enumerate(answers)
    ]
    path.write_text(json.dumps(records))
    trained = load_train_set(str(path), against=[]).domains[str(path)]
    options = dict(output_dir=tmp_path / "out", batch_size=2, mode="robust", max_new_tokens=1, progress=False)
    evaluated = run_eval(tiny_llama, smollm2_tokenizer, [str(path)], **options)["datasets"][file_label(str(path))]
    assert trained == evaluated["domain"] == domain


def test_an_interrupted_run_keeps_finished_batches(tiny_llama, smollm2_tokenizer, tmp_path, monkeypatch):
    real, calls = generation.generate_greedy, []

    def fail_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_greedy", fail_on_second_batch)
    kwargs = dict(limit=4, batch_size=2, mode="robust", output_dir=tmp_path, max_new_tokens=2, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_eval(tiny_llama, smollm2_tokenizer, ["mawps"], **kwargs)
    assert len(read_items(tmp_path / "mawps.jsonl")) == 2
    summary = run_eval(tiny_llama, smollm2_tokenizer, ["mawps"], **kwargs)
    assert (summary["datasets"]["mawps"]["reused"], summary["datasets"]["mawps"]["generated"]) == (2, 2)
    assert len(calls) == 3


def test_per_level_accuracy_from_records_with_levels(tiny_llama, smollm2_tokenizer, tmp_path):
    records = [
        {"instruction": f"What is {i} + 1?", "input": "", "output": "", "answer": str(i + 1), "level": i % 2}
        for i in range(4)
    ]
    path = tmp_path / "levels_test.json"
    path.write_text(json.dumps(records))
    summary = run_eval(
        tiny_llama,
        smollm2_tokenizer,
        [str(path)],
        batch_size=4,
        mode="robust",
        output_dir=tmp_path / "out",
        max_new_tokens=2,
        progress=False,
    )
    ((label, stats),) = summary["datasets"].items()
    assert stats["domain"] == "math" and set(stats["levels"]) == {"0", "1"}
    assert sum(level["count"] for level in stats["levels"].values()) == 4
    assert {item["level"] for item in read_items(tmp_path / "out" / f"{label}.jsonl")} == {0, 1}


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def tiny_model_dir(tmp_path, smollm2_tokenizer):
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    copy.deepcopy(smollm2_tokenizer).save_pretrained(folder)
    return folder


def eval_argv(model_dir, output_dir, datasets: str, *options: str) -> list[str]:
    """`hyplora eval` arguments for `main`."""
    return ["eval", "--model", str(model_dir), "--datasets", datasets, "--output-dir", str(output_dir), *options]


def test_cli_end_to_end_with_adapter_and_rerun(tiny_model_dir, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    _tiny_hyplora().save_pretrained(adapter)
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--datasets",
        "svamp,aqua",
        "boolq",
        "--limit",
        "2",
        "--batch-size",
        "2",
        "--mode",
        "robust",
        "--max-new-tokens",
        "3",
        "--output-dir",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| svamp |" in printed and "| aqua |" in printed and "weighted mean" in printed
    base = json.loads((out / "summary.json").read_text())
    assert (
        base["model"] == str(tiny_model_dir)
        and base["num_beams"] == 1
        and base["mode_notes"] == list(ev.ROBUST_CHANGES)
    )
    assert [base["datasets"][name]["count"] for name in ("svamp", "aqua", "boolq")] == [2, 2, 2]
    assert main(argv) == 0
    assert all(r["generated"] == 0 for r in json.loads((out / "summary.json").read_text())["datasets"].values())
    assert main(argv + ["--adapter", str(adapter)]) == 0  # another model: nothing reused
    tuned = json.loads((out / "summary.json").read_text())
    assert tuned["adapter"] == str(adapter) and tuned["model_fingerprint"] != base["model_fingerprint"]
    assert all(r["generated"] == 2 for r in tuned["datasets"].values())


def test_cli_merge_gives_the_unmerged_dora_outputs(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "dora"
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True, init_lora_weights=False)
    get_peft_model(tiny_model("llama"), config).save_pretrained(adapter)
    outputs = {}
    for merge in ([], ["--merge"]):
        out = tmp_path / f"eval{len(merge)}"
        argv = ["--adapter", str(adapter), *merge, "--limit", "3", "--max-new-tokens", "4", "--mode", "robust"]
        assert main(eval_argv(tiny_model_dir, out, "svamp", *argv)) == 0
        assert json.loads((out / "summary.json").read_text())["merged"] == bool(merge)
        outputs[bool(merge)] = [item["output"] for item in read_items(out / "svamp.jsonl")]
    assert outputs[True] == outputs[False] and len(outputs[True]) == 3


def test_cli_options_are_the_eval_options():
    eval_parser = build_parser()._subparsers._group_actions[0].choices["eval"]
    actions = {action.dest: action for action in eval_parser._actions}
    assert actions["mode"].choices == MODES and actions["prompt_template"].choices == TEMPLATES
    for option in dataclasses.fields(EvalOptions):
        if option.metadata.get("cli", True):
            assert actions[option.name].help.startswith(option.metadata["help"])
            assert actions[option.name].required == (option.default is dataclasses.MISSING)
            assert option.default is dataclasses.MISSING or actions[option.name].default == option.default


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--datasets", "mnist"], "unknown test set"),
        (["--datasets", "svamp", "--limit", "0"], "option limit"),
        (["--datasets", "svamp", "--batch-size", "0"], "option batch_size"),
        (["--datasets", "svamp", "--adapter", "no/such/adapter"], "adapter_config.json"),
        (["--datasets", "svamp", "svamp"], "same set twice"),
        (["--datasets", "svamp", "--merge"], "--merge: needs --adapter"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tiny_model_dir, tmp_path, capsys, extra, message):
    assert main(["eval", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar of a model load, if any
    assert message in err and err.startswith("hyplora eval: error:")


def test_cli_refuses_to_merge_hyplora(tiny_model_dir, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    _tiny_hyplora().save_pretrained(adapter)
    out = tmp_path / "o"
    assert main(eval_argv(tiny_model_dir, out, "svamp", "--adapter", str(adapter), "--merge")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hyplora eval: error: --merge:") and "HypLoRA" in err and not out.exists()


def test_bad_files_and_options(tiny_llama, smollm2_tokenizer, tmp_path):
    run = dict(batch_size=2, max_new_tokens=1, progress=False)
    corrupt = tmp_path / "out"
    corrupt.mkdir()
    (corrupt / "svamp.jsonl").write_text('{"index": 0}\n{not json\n')
    message = one_line_error(run_eval, tiny_llama, smollm2_tokenizer, ["svamp"], limit=1, output_dir=corrupt, **run)
    assert "svamp.jsonl" in message and "line 1" in message
    (corrupt / "svamp.jsonl").write_text("{not json\n")
    assert "line 1 is not valid JSON" in one_line_error(
        run_eval, tiny_llama, smollm2_tokenizer, ["svamp"], limit=1, output_dir=corrupt, **run
    )
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert "not a folder" in one_line_error(
        run_eval, tiny_llama, smollm2_tokenizer, ["svamp"], output_dir=a_file, **run
    )
    assert "unknown mode" in one_line_error(
        run_eval, tiny_llama, smollm2_tokenizer, ["svamp"], mode="exact", output_dir=tmp_path, **run
    )
    assert "non-empty list" in one_line_error(
        run_eval, tiny_llama, smollm2_tokenizer, "svamp", output_dir=tmp_path, **run
    )
    assert "num_beams" in one_line_error(
        run_eval, tiny_llama, smollm2_tokenizer, ["svamp"], num_beams=0, output_dir=tmp_path, **run
    )


def test_batch_size_defaults_to_64_prompts_greedy_per_cpu_thread_up_to_2_and_32_with_beams(tmp_path):
    def batch(device="cuda", **options):
        return ev.EvalOptions(["svamp"], output_dir=tmp_path / "out", **options).batch_for(torch.device(device))

    assert batch(mode="robust") == 64 and batch(mode="paper") == 32
    assert batch(mode="paper", num_beams=1) == 64 and batch(mode="robust", num_beams=2) == 32
    assert batch(mode="paper", batch_size=5) == 5
    threads = torch.get_num_threads()
    try:
        for count, rows in ((1, 64), (2, 128), (8, 128)):
            torch.set_num_threads(count)
            assert batch("cpu", mode="robust") == rows and batch("cpu", mode="paper") == 32
            assert batch("cpu", mode="robust", batch_size=7) == 7
    finally:
        torch.set_num_threads(threads)
