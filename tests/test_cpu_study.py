"""The CPU study: statistics, the grid and its runner's skip-if-done, the tables' numbers on the committed results.

The end-to-end check (real `hyplora train` / `hyplora eval` on a tiny model) and the regeneration of every table
(~10 s) are marked `study`, deselected by default: `pytest -m study tests/test_cpu_study.py`.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

STUDY_DIR = Path(__file__).resolve().parents[1] / "examples" / "cpu_study"
sys.path.insert(0, str(STUDY_DIR))

import grid  # noqa: E402
import input_norms  # noqa: E402
import run  # noqa: E402
import stats  # noqa: E402
import tables  # noqa: E402
from grid import GRID, MATH, Best, Eval, Train  # noqa: E402


# ----------------------------------------------------------------------------- statistics
def test_accuracy_ci_matches_the_normal_approximation():
    correct = np.array([1] * 30 + [0] * 70)
    interval = stats.accuracy_ci(correct)
    half_width = 1.96 * math.sqrt(0.3 * 0.7 / 100)  # 0.0898
    assert interval.estimate == pytest.approx(0.3)
    assert interval.n == 100
    assert interval.low == pytest.approx(0.3 - half_width, abs=0.02)
    assert interval.high == pytest.approx(0.3 + half_width, abs=0.02)
    assert stats.accuracy_ci(correct) == interval  # seeded: the same interval every time


def test_accuracy_ci_of_constant_scores_is_the_point():
    assert stats.accuracy_ci([1, 1, 1]) == stats.Interval(1.0, 1.0, 1.0, 3)
    assert stats.accuracy_ci([0] * 5) == stats.Interval(0.0, 0.0, 0.0, 5)


@pytest.mark.parametrize("bad", [[], [0, 2], [[0, 1]], [float("nan")]])
def test_scores_are_validated(bad):
    with pytest.raises(ValueError):
        stats.accuracy_ci(bad)


def test_mcnemar_exact_pinned_value():
    # 10 items only A right, 2 only B right, 20 both, 5 neither: p = 2 * P(X <= 2), X ~ Bin(12, 1/2)
    a = [1] * 10 + [0] * 2 + [1] * 20 + [0] * 5
    b = [0] * 10 + [1] * 2 + [1] * 20 + [0] * 5
    test = stats.mcnemar_exact(a, b)
    assert (test.a_only, test.b_only) == (10, 2)
    assert test.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert stats.mcnemar_exact(b, a).p_value == pytest.approx(test.p_value)  # two-sided: symmetric


def test_mcnemar_without_discordant_pairs_and_bad_input():
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1]) == stats.McNemar(0, 0, 1.0)
    with pytest.raises(ValueError, match="0/1"):
        stats.mcnemar_exact([0.5, 1], [1, 1])
    with pytest.raises(ValueError, match="same items"):
        stats.mcnemar_exact([1, 0], [1, 0, 1])


def test_paired_bootstrap_identical_methods():
    scores = [1, 0, 1, 1, 0]
    assert stats.paired_bootstrap(scores, scores) == stats.PairedDifference(0.0, 0.0, 0.0, 1.0, 5)


def test_paired_bootstrap_interval_and_p_value():
    rng = np.random.default_rng(1)
    b = rng.integers(0, 2, 400)
    a = b.copy()
    a[:40] = 1  # A additionally right on some items B got wrong
    diff = stats.paired_bootstrap(a, b)
    per_item = a - b
    se = per_item.std(ddof=1) / math.sqrt(per_item.size)
    assert diff.difference == pytest.approx(per_item.mean())
    assert diff.low == pytest.approx(per_item.mean() - 1.96 * se, abs=0.01)
    assert diff.high == pytest.approx(per_item.mean() + 1.96 * se, abs=0.01)
    assert diff.low > 0 and diff.p_value < 0.001
    # pairing matters: the same accuracies, unpaired, would give a far wider interval
    unpaired_se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert diff.high - diff.low < 0.5 * 2 * 1.96 * unpaired_se


def test_paired_bootstrap_no_difference_is_not_significant():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    diff = stats.paired_bootstrap(a, b)
    assert diff.low < diff.difference < diff.high
    assert (diff.low < 0 < diff.high) == (diff.p_value > 0.05)


# ----------------------------------------------------------------------------- grid
def test_the_grid_expands_to_the_committed_runs():
    """Every committed summary is a line of the grid, done; the seeds' rates are the ones round one's grid chose."""
    jobs, _ = grid.expand(GRID)
    committed = {p.stem for kind in ("runs", "evals") for p in (grid.RESULTS_DIR / kind).glob("*.json")}
    done = {job.name for job in jobs if run.state(job, grid.RESULTS_DIR) == "done"}
    assert len(committed) >= 55 and committed == done
    chosen = {(job.method, job.seed): job.lr for job in jobs if isinstance(job, Train) and job.stage == "seeds"}
    assert chosen == {(m, s): lr for m, lr in (("lora", 1e-3), ("hyplora", 3e-3), ("dora", 1e-3)) for s in (1, 2)}
    names = {job.name for job in jobs}
    assert {"math-hyplora-scale-none-lr3e-3-s0", "commonsense-dora-lr1e-3-s0--robust", "math-base--paper"} <= names


def summary(results: Path, job, **fields):
    path = run.summary_path(job, results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))


def test_best_rate_waits_for_every_rate_of_its_stage(tmp_path):
    lines = [Train("lr", "lora", lr) for lr in (1e-3, 3e-3)] + [Train("seeds", "lora", Best("lr"), seed=1)]
    summary(tmp_path, lines[0], result={"val_loss": 1.2})
    jobs, pending = grid.expand(lines, tmp_path)
    assert [job.name for job in jobs] == ["math-lora-lr1e-3-s0", "math-lora-lr3e-3-s0"] and pending == lines[2:]
    summary(tmp_path, lines[1], result={"val_loss": 1.1})
    assert grid.expand(lines, tmp_path)[0][-1].name == "math-lora-lr3e-3-s1"
    ablation = Train("ablations", "lora", Best("lr", variant=""), variant="x")  # the default variant's rate
    assert grid.resolve(ablation, tmp_path, lines).name == "math-lora-x-lr3e-3-s0"


def test_a_budget_sets_steps_and_examples_and_options_override_the_schedule(tmp_path):
    job = Train("n768", "hyplora", 1e-3, budget=768, variant="k2", options={"curvature": 2.0, "eval_steps": 48})
    assert job.name == "math-hyplora-k2-n768-lr1e-3-s0"
    line = run.command(job, tmp_path)
    for flag, value in (("--max-steps", "192"), ("--limit", "768"), ("--eval-steps", "48"), ("--curvature", "2.0")):
        assert line[line.index(flag) + 1] == value
    assert "--resume" not in line and "--no-learn-curvature" in run.command(
        Train("x", "hyplora", 1e-3, options={"learn_curvature": False}), tmp_path
    )
    (run.folder(job, tmp_path) / "checkpoint-10").mkdir(parents=True)
    (run.folder(job, tmp_path) / "checkpoint-10" / "trainer_state.json").write_text("{}")
    assert run.command(job, tmp_path)[-1] == "--resume"
    evaluation = run.command(Eval("n768", job, MATH, 100, merge=True), tmp_path)
    assert evaluation[evaluation.index("--adapter") + 1] == str(run.folder(job, tmp_path)) and "--merge" in evaluation


# ----------------------------------------------------------------------------- runner
def test_runner_skips_done_jobs_and_runs_evaluations_after_their_training(tmp_path, monkeypatch):
    done, todo = Train("a", "lora", 1e-3), Train("a", "lora", 3e-3)
    lines = [done, todo, Eval("b", todo, ("svamp",), 2), Eval("b", Train("a", "dora", 1e-3), ("svamp",), 2)]
    summary(tmp_path, done, result={"val_loss": 1.0})
    calls = []

    def fake_run_job(job, work_dir, results_dir, levels_dir):
        calls.append(job.name)
        if job.name == "math-dora-lr1e-3-s0":
            return False
        summary(results_dir, job, result={"val_loss": 1.0})
        return True

    monkeypatch.setattr(run, "run_job", fake_run_job)
    lines.insert(2, Train("a", "dora", 1e-3))
    failed = run.run_grid(lines, tmp_path / "work", tmp_path, jobs=2)
    assert failed == {"math-dora-lr1e-3-s0"}  # its evaluation never became ready
    assert sorted(calls) == ["math-dora-lr1e-3-s0", "math-lora-lr3e-3-s0", "math-lora-lr3e-3-s0--robust"]
    assert calls.index("math-lora-lr3e-3-s0--robust") > calls.index("math-lora-lr3e-3-s0")
    calls.clear()
    assert (
        run.run_grid([done, todo, lines[3]], tmp_path / "work", tmp_path) == set() and calls == []
    )  # all done: nothing runs


def test_a_job_that_raises_is_reported_failed_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    broken, fine = Train("a", "lora", 1e-3), Train("a", "lora", 3e-3)
    calls = []

    def fake_run_job(job, work_dir, results_dir, levels_dir):
        calls.append(job.name)
        if job is broken:
            raise KeyError("datasets")
        summary(results_dir, job, result={"val_loss": 1.0})
        return True

    monkeypatch.setattr(run, "run_job", fake_run_job)
    assert run.run_grid([broken, fine], tmp_path / "work", tmp_path, jobs=1) == {broken.name}
    assert calls == [broken.name, fine.name]
    assert f"{broken.name}: KeyError: 'datasets'" in capsys.readouterr().out


def test_a_training_finished_before_a_kill_is_summarised_without_rerunning(tmp_path, monkeypatch):
    job = Train("a", "lora", 1e-3)
    folder = run.folder(job, tmp_path / "work")
    (folder / "checkpoint-48").mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"")
    (folder / "train_args.json").write_text(json.dumps({"args": {"limit": 192}, "result": {"val_loss": 1.33}}))
    log = [{"loss": 2.0, "step": 2}, {"eval_loss": 1.5, "step": 10}, {"eval_loss": 1.33, "step": 48}] * 2
    (folder / "loss_log.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in log))
    monkeypatch.setattr(run.subprocess, "call", lambda *a, **k: pytest.fail("the CLI must not run again"))
    assert run.run_job(job, tmp_path / "work", tmp_path, None)
    written = grid.read_summary("runs", job.name, tmp_path)
    assert written["result"]["val_loss"] == 1.33 and written["val_curve"] == [[10, 1.5], [48, 1.33]]
    assert written["train_curve"] == [[2, 2.0], [2, 2.0]] and not (folder / "checkpoint-48").exists()


def test_eval_summary_keeps_the_first_items_in_order_with_levels(tmp_path):
    job = Eval("e", None, ("svamp",), 2)
    folder = run.folder(job, tmp_path)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"mode": "robust", "datasets": {"svamp": {}}}))
    rows = [
        {"index": i, "settings_key": "k", "prompt_hash": "h", "output": "", "correct": i != 1, "level": i}
        for i in (2, 1, 0)
    ]
    (folder / "svamp.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    written = run.eval_summary(job, tmp_path)
    assert written["items"] == {"svamp": {"correct": [1, 0], "level": [0, 1]}}
    assert (written["name"], written["protocol"], written["run"]) == ("math-base--robust", "robust", None)


# ----------------------------------------------------------------------------- tables on the committed results
@pytest.fixture(scope="module")
def study():
    return tables.Study()


def points(d) -> tuple[float, float, float]:
    return round(100 * d.difference, 1), round(100 * d.low, 1), round(100 * d.high, 1)


def test_committed_results_give_the_reported_losses(study):
    losses = tables.by_budget(study)
    mean_sd = {
        m: (round(np.mean(v[192]), 4), round(np.std(v[192], ddof=1), 4))
        for (m, variant), v in losses.items()
        if not variant
    }
    assert mean_sd == {"lora": (1.33, 0.0011), "hyplora": (1.3545, 0.0002), "dora": (1.3298, 0.0011)}
    assert losses[("hyplora", "llr")][192] == [pytest.approx(1.3289, abs=5e-5)]  # round two: llr at its rate, 1e-2
    assert study.loss(Train("", "hyplora", 1e-2)) == pytest.approx(1.4077, abs=5e-5)
    assert study.loss(tables.chosen("hyplora", model=grid.GEMMA)) == pytest.approx(1.3601, abs=5e-5)


def test_committed_results_give_the_reported_accuracies_and_intervals(study):
    scores = {m: study.correct(tables.evals(m, MATH, 100), MATH).mean(0) for m in ("lora", "hyplora", "dora")}
    lora = stats.accuracy_ci(scores["lora"])
    assert (round(100 * lora.estimate, 1), round(100 * lora.low, 1), round(100 * lora.high, 1)) == (7.4, 5.7, 9.2)
    assert round(100 * scores["hyplora"].mean(), 1) == 6.4 and scores["hyplora"].size == 700
    d = stats.paired_bootstrap(scores["hyplora"], scores["lora"])
    assert points(d) == (-1.0, -2.7, 0.7) and round(d.p_value, 3) == 0.267
    seed0 = (
        study.correct(tables.evals("hyplora", MATH, 100), MATH)[0],
        study.correct(tables.evals("lora", MATH, 100), MATH)[0],
    )
    assert stats.mcnemar_exact(*seed0) == stats.McNemar(26, 32, pytest.approx(0.512, abs=5e-4))
    none, default = (
        study.correct(g, MATH)[0] for g in (tables.ablation_groups()["scale-none"], tables.ablation_groups()[""])
    )
    assert points(stats.paired_bootstrap(none, default)) == (-5.3, -7.3, -3.3)
    gemma = [study.correct(tables.evals(m, MATH, 50, (0,), model=grid.GEMMA), MATH)[0] for m in ("hyplora", "lora")]
    assert points(stats.paired_bootstrap(*gemma)) == (-1.1, -3.4, 1.1)


def test_budget_table_and_figure_with_a_second_budget(study, tmp_path, monkeypatch):
    lines = [Train("n768", m, 1e-3, seed, budget=768) for m in ("lora", "hyplora") for seed in (0, 1)]
    for line, loss in zip(lines, (1.20, 1.22, 1.25, 1.25)):
        summary(tmp_path, line, result={"val_loss": loss})
    seeds = [Train("seeds-768", line.method, Best("n768"), line.seed, budget=768) for line in lines]
    monkeypatch.setattr(grid, "GRID", lines + seeds)
    monkeypatch.setattr(tables, "GRID", lines + seeds)
    losses = tables.by_budget(tables.Study(tmp_path))
    assert losses == {("lora", ""): {768: [1.20, 1.22]}, ("hyplora", ""): {768: [1.25, 1.25]}}
    row = tables.budget_table(losses)[3]
    assert "+0.0400 ± 0.0100" in row  # gap 1.25 - 1.21, se sqrt(0.0002 / 2 + 0)
    tables.plot_budgets({**losses, **{k: {192: [1.3], **v} for k, v in losses.items()}}, tmp_path / "budget.png")
    assert (tmp_path / "budget.png").stat().st_size > 0


def test_rate_grids_show_every_budget_and_choose_only_a_complete_grid(tmp_path, monkeypatch):
    lines = [Train("lr-768", "lora", lr, budget=768) for lr in (3e-4, 1e-3, 3e-3)]
    lines += [Train("lr-768", "hyplora", lr, budget=768, variant="llr") for lr in (3e-3, 1e-2)]
    for line, loss in zip(lines, (1.30, 1.21, 1.24, 1.28)):  # the last llr rate has not trained
        summary(tmp_path, line, result={"val_loss": loss})
    monkeypatch.setattr(grid, "GRID", lines)
    monkeypatch.setattr(tables, "GRID", lines)
    header, _, lora, llr, *_ = tables.rate_grids(tables.Study(tmp_path))
    assert header.split(" | ")[2:] == ["lr 0.0003", "lr 0.001", "lr 0.003", "lr 0.01", "chosen lr |"]
    assert lora == "| LoRA | 768 | 1.3000 | 1.2100 | 1.2400 |  | 0.001 |"
    assert llr == "| HypLoRA llr | 768 |  |  | 1.2800 | … | — (1 of 2 trained) |"


def test_budget_accuracy_waits_for_every_evaluation_then_pairs_each_form_with_lora(tmp_path, monkeypatch):
    runs = [
        Train("n1536", m, 1e-3, budget=1536, variant=v) for m, v in (("lora", ""), ("hyplora", ""), ("hyplora", "llr"))
    ]
    evaluations = [Eval("n1536", r, MATH, 10) for r in runs]
    monkeypatch.setattr(grid, "GRID", runs + evaluations)
    monkeypatch.setattr(tables, "GRID", runs + evaluations)
    correct = {"lora": [1] * 3 + [0] * 7, "hyplora": [1] * 2 + [0] * 8, "llr": [1] * 5 + [0] * 5}
    for e, key in zip(evaluations[:2], correct):
        summary(tmp_path, e, items={d: {"correct": correct[key]} for d in MATH})
    assert tables.budget_accuracy(tables.Study(tmp_path)) == [
        "Not evaluated yet: 2 of 3 evaluations have a summary.",
        "",
    ]
    summary(tmp_path, evaluations[2], items={d: {"correct": correct["llr"]} for d in MATH})
    rows = {line.split(" | ")[0][2:]: line for line in tables.budget_accuracy(tables.Study(tmp_path)) if "|" in line}
    assert rows["HypLoRA llr"].endswith("| 50.0 [38.6, 61.4] |  |")  # pooled over 7 x 10 items
    assert rows["LoRA"].endswith("| 30.0 [20.0, 41.4] |  |")
    assert rows["HypLoRA llr − LoRA"].startswith("| HypLoRA llr − LoRA | 1 | 70 | +20.0 [+11.4, +30.0] |")
    assert rows["HypLoRA llr − LoRA"].endswith("| 14 / 0, p = 0.000122 |")
    assert rows["HypLoRA − HypLoRA llr"].endswith("| 0 / 21, p = 9.54e-07 |")


# ----------------------------------------------------------------------------- input norms
def test_input_norms_are_the_norms_each_target_layer_receives(tiny_llama):
    import torch

    class WordTokenizer:  # token ids from the text, so no tokenizer files are needed
        def __call__(self, text, return_tensors, truncation, max_length):
            return {"input_ids": torch.tensor([[len(word) % 100 for word in text.split()][:max_length]])}

    norms = input_norms.input_norms(tiny_llama, WordTokenizer(), ["a bb ccc", "dddd ee"], ["q_proj", "down_proj"], 16)
    layers = tiny_llama.config.num_hidden_layers
    assert set(norms) == {"q_proj", "down_proj"}
    assert norms["q_proj"][0] == tiny_llama.config.hidden_size and norms["q_proj"][1].shape == (layers * 5,)
    assert norms["down_proj"][0] == tiny_llama.config.intermediate_size
    captured = []
    hook = tiny_llama.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda _, a: captured.append(a[0]))
    with torch.no_grad():
        tiny_llama(**WordTokenizer()("a bb ccc", None, True, 16))
    hook.remove()
    assert np.allclose(norms["q_proj"][1][:3], captured[0].norm(dim=-1).flatten().numpy(), rtol=1e-5)
    assert not any(module._forward_pre_hooks for module in tiny_llama.modules())  # its hooks are removed


def test_time_coordinate_follows_the_layers_own_input_scaling_and_clip():
    from hyplora.adapter.lorentz import MAX_TANGENT_NORM

    assert input_norms.time_coordinate(8.0, "none", 576) == pytest.approx(math.cosh(8.0))
    assert input_norms.time_coordinate(8.0, "unit", 576) == pytest.approx(math.cosh(1.0))
    assert input_norms.time_coordinate(48.0, "rms", 576) == pytest.approx(math.cosh(2.0))
    assert input_norms.time_coordinate(50.0, "none", 576) == pytest.approx(math.cosh(MAX_TANGENT_NORM))


# ----------------------------------------------------------------------------- slow checks (pytest -m study)
@pytest.mark.study
def test_the_runner_trains_evaluates_and_skips_with_the_real_cli(tmp_path):
    """A two-step training of a tiny model and a two-item evaluation through `hyplora`; a second run does nothing."""
    from hyplora.harness.base_models import load_tokenizer, tiny_model

    model = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model)
    load_tokenizer("smollm2-135m").save_pretrained(model)
    schedule = {"val_size": 4, "eval_steps": 1, "save_steps": 1, "warmup_steps": 1, "cutoff_len": 64}
    train = Train("t", "hyplora", 1e-3, model=str(model), budget=8, options=schedule)
    lines = [train, Eval("e", train, ("svamp",), 2)]
    work, results = tmp_path / "work", tmp_path / "results"
    assert run.run_grid(lines, work, results) == set()
    written = grid.read_summary("runs", train.name, results)
    assert written["result"]["steps"] == 2 and written["args"]["limit"] == 8 and written["wall_s"] > 0
    assert len(grid.read_summary("evals", lines[1].name, results)["items"]["svamp"]["correct"]) == 2
    modified = {p: p.stat().st_mtime for p in results.rglob("*.json")}
    assert run.run_grid(lines, work, results) == set()
    assert {p: p.stat().st_mtime for p in results.rglob("*.json")} == modified


@pytest.mark.study
def test_the_committed_tables_reproduce_from_the_committed_results(study, tmp_path):
    written = tables.write_tables(study, tmp_path / "tables.md")
    assert written == (tables.DOCS_DIR / "tables.md").read_text()
    assert "| HypLoRA − LoRA | 3 | 700 | -1.0 [-2.7, +0.7] | 0.267 |" in written
