"""The CPU study's statistics, its skip/resume bookkeeping on fake run folders, and the report writer."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

STUDY_DIR = Path(__file__).resolve().parents[1] / "examples" / "cpu_study"
sys.path.insert(0, str(STUDY_DIR))

import analyze  # noqa: E402
import input_norms  # noqa: E402
import run_study  # noqa: E402
import stats  # noqa: E402
import study  # noqa: E402
from study import DESIGN, EvalJob, TrainJob  # noqa: E402


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


# ----------------------------------------------------------------------------- fake run folders
def fake_train(folder: Path, *, finished=True, checkpoint_step=None, complete_checkpoint=True, val_loss=2.0):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"args": {"lr": 1e-3}, "run": {"train_examples": 8}}
    if finished:
        record["result"] = {"train_loss": 2.5, "val_loss": val_loss, "steps": 2, "runtime_s": 1.0}
        (folder / "adapter_model.safetensors").write_bytes(b"")
    (folder / "train_args.json").write_text(json.dumps(record))
    (folder / "loss_log.jsonl").write_text(
        "\n".join(
            json.dumps(e)
            for e in [{"loss": 2.6, "step": 1}, {"eval_loss": 2.4, "step": 1}, {"eval_loss": val_loss, "step": 2}]
        )
    )
    if checkpoint_step is not None:
        checkpoint = folder / f"checkpoint-{checkpoint_step}"
        checkpoint.mkdir()
        if complete_checkpoint:
            (checkpoint / "trainer_state.json").write_text("{}")


def fake_eval(folder: Path, job: EvalJob, correct: dict[str, list[int]], levels: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    summary = {
        "mode": job.protocol,
        "limit": job.limit,
        "datasets": {ds: {"accuracy": float(np.mean(c))} for ds, c in correct.items()},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    for ds, values in correct.items():
        rows = [
            {
                "index": i,
                "settings_key": "k",
                "prompt_hash": "h",
                "output": "",
                "correct": bool(v),
                **({"level": levels[ds][i]} if levels and ds in levels else {}),
            }
            for i, v in enumerate(values)
        ]
        (folder / f"{ds}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_train_job_states_and_resume_flag(tmp_path):
    job = TrainJob("main-s0", "math", "hyplora", 1e-3, 0)
    assert job.name == "math-hyplora-lr1e-3-s0"
    assert job.state(tmp_path) == "new"
    fake_train(job.folder(tmp_path), finished=False, checkpoint_step=4, complete_checkpoint=False)
    assert job.state(tmp_path) == "new"  # a checkpoint cut off mid-write is not resumable
    (job.folder(tmp_path) / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert job.state(tmp_path) == "partial"
    assert job.estimate_s(tmp_path) < job.estimate_s()  # a resumed run is planned for its remaining steps only
    command = job.command(tmp_path)
    assert command[-1] == "--resume"
    assert command[command.index("--limit") + 1] == str(
        DESIGN["schedule"]["max_steps"] * DESIGN["schedule"]["batch_size"]
    )
    (job.folder(tmp_path) / "adapter_model.safetensors").write_bytes(b"")
    assert job.state(tmp_path) == "partial"  # the adapter without the final result: not finished
    fake_train(job.folder(tmp_path))
    assert job.state(tmp_path) == "done"


def test_unfinished_adapter_without_checkpoint_is_set_aside(tmp_path):
    job = TrainJob("main-s0", "math", "dora", 1e-3, 0)
    fake_train(job.folder(tmp_path), finished=False)
    (job.folder(tmp_path) / "adapter_model.safetensors").write_bytes(b"")
    assert job.state(tmp_path) == "new"
    run_study.set_aside_unfinished(job, tmp_path)
    assert not job.folder(tmp_path).exists()
    assert [p.name.split(".unfinished-")[0] for p in (tmp_path / "train").iterdir()] == [job.name]


def test_ablation_options_become_flags():
    job = TrainJob("ablations", "math", "hyplora", 1e-3, 0, "learn-k", (("curvature", 2.0), ("learn_curvature", True)))
    command = job.command(Path("/nonexistent"))
    assert "--learn-curvature" in command and command[command.index("--curvature") + 1] == "2.0"
    assert job.name == "math-hyplora-learn-k-lr1e-3-s0"
    off = TrainJob("ablations", "math", "hyplora", 1e-3, 0, "x", (("learn_curvature", False),))
    assert "--no-learn-curvature" in off.command(Path("/nonexistent"))


def test_dora_evaluations_merge_after_the_first_stage():
    dora = {stage: EvalJob(stage, "math", TrainJob(stage, "math", "dora", 1e-3, 1)) for stage in ("main-s0", "seeds")}
    lora = EvalJob("seeds", "math", TrainJob("seeds", "math", "lora", 1e-3, 1))
    assert "--merge" not in dora["main-s0"].command(Path("/nonexistent"))
    assert "--merge" in dora["seeds"].command(Path("/nonexistent"))
    assert "--merge" not in lora.command(Path("/nonexistent"))


def test_eval_job_states(tmp_path):
    run = TrainJob("main-s0", "math", "lora", 1e-3, 0)
    job = EvalJob("main-s0", "math", run)
    assert job.state(tmp_path) == "waiting"
    fake_train(run.folder(tmp_path))
    assert job.state(tmp_path) == "new"
    assert "--adapter" in job.command(tmp_path) and "--levels-dir" not in job.command(tmp_path)
    fake_eval(job.folder(tmp_path), job, {ds: [1, 0] for ds in job.datasets[:-1]})
    assert job.state(tmp_path) == "new"  # one test set missing
    fake_eval(job.folder(tmp_path), job, {ds: [1, 0] for ds in job.datasets})
    assert job.state(tmp_path) == "done"
    assert EvalJob("seeds", "math", None, "paper").datasets == (DESIGN["paper_slice"]["dataset"],)


def write_grid(results_dir: Path, method: str, losses: dict):
    for lr, loss in losses.items():
        path = results_dir / "runs" / f"{TrainJob('', 'math', method, lr, 0).name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"result": {"val_loss": loss}}))


def test_chosen_lr_waits_for_the_whole_grid(tmp_path):
    grid = DESIGN["lr_grid"]
    write_grid(tmp_path, "lora", {grid[0]: 2.0, grid[1]: 1.5})
    assert study.chosen_lr("math", "lora", tmp_path) is None
    plan = study.stages(tmp_path)
    assert all(
        job.state(tmp_path) == "blocked" for job in plan["seeds"] if job.kind == "train" and job.method == "lora"
    )
    write_grid(tmp_path, "lora", {grid[2]: 1.7})
    assert study.chosen_lr("math", "lora", tmp_path) == grid[1]
    seeds = [job for job in study.stages(tmp_path)["seeds"] if job.kind == "train" and job.method == "lora"]
    assert [job.name for job in seeds] == [f"math-lora-lr{study._lr_tag(grid[1])}-s{s}" for s in DESIGN["seeds"][1:]]


def test_a_best_rate_at_the_end_of_the_grid_adds_the_next_point_past_it(tmp_path):
    grid, (below, above) = DESIGN["lr_grid"], DESIGN["lr_grid_beyond"]
    write_grid(tmp_path, "hyplora", {grid[0]: 1.6, grid[1]: 1.5, grid[2]: 1.4})
    assert study.lr_grid("math", "hyplora", tmp_path) == (*grid, above)
    assert study.chosen_lr("math", "hyplora", tmp_path) is None  # waits for the added point
    assert f"math-hyplora-lr{study._lr_tag(above)}-s0" in {job.name for job in study.stages(tmp_path)["lr-grid"]}
    write_grid(tmp_path, "hyplora", {above: 1.45})
    assert study.chosen_lr("math", "hyplora", tmp_path) == grid[2]
    write_grid(tmp_path, "lora", {grid[0]: 1.3, grid[1]: 1.5, grid[2]: 1.6})
    assert study.lr_grid("math", "lora", tmp_path) == (below, *grid)
    write_grid(tmp_path, "dora", {grid[0]: 1.6, grid[1]: 1.5, grid[2]: 1.55})
    assert study.lr_grid("math", "dora", tmp_path) == grid and study.chosen_lr("math", "dora", tmp_path) == grid[1]


def test_secondary_model_jobs_are_named_and_run_on_that_model(tmp_path):
    secondary = DESIGN["secondary"]
    model, (low, high) = secondary["model"], secondary["lr_grid"]
    jobs = study.stages(tmp_path)["secondary"]
    trainings = [f"{model}-math-{m}-lr{study._lr_tag(lr)}-s0" for m in secondary["methods"] for lr in (low, high)]
    assert [job.name for job in jobs if job.kind == "train"] == trainings
    assert [job.state(tmp_path) for job in jobs if job.kind == "eval"] == ["blocked", "blocked", "new"]  # grid first
    train, base = jobs[0], jobs[-1]
    assert train.command(tmp_path)[train.command(tmp_path).index("--model") + 1] == model
    command = base.command(tmp_path)
    assert base.name == f"{model}-math-base--robust" and command[command.index("--model") + 1] == model
    assert command[command.index("--datasets") + 1 : command.index("--limit")] == list(secondary["test"])
    assert command[command.index("--limit") + 1] == str(secondary["limit"])
    # each method's evaluation follows its own grid on this model: LoRA lower at `high`, HypLoRA at `low`
    for method, losses in (("lora", (1.5, 1.4)), ("hyplora", (1.3, 1.6))):
        for lr, loss in zip((low, high), losses):
            path = tmp_path / "runs" / f"{TrainJob('', 'math', method, lr, 0, model=model).name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"result": {"val_loss": loss}}))
    evals = [job for job in study.stages(tmp_path)["secondary"] if job.kind == "eval"]
    assert [job.name for job in evals[:2]] == [
        f"{model}-math-lora-lr{study._lr_tag(high)}-s0--robust",
        f"{model}-math-hyplora-lr{study._lr_tag(low)}-s0--robust",
    ]
    assert evals[0].model == model and evals[0].limit == secondary["limit"]  # from its run
    assert study.chosen_lr("math", "lora", tmp_path) is None  # the primary model's grid is not touched
    # the primary model's jobs keep their names and slices
    primary = EvalJob("", "math", TrainJob("", "math", "lora", 1e-3, 0))
    assert primary.name == "math-lora-lr1e-3-s0--robust" and primary.datasets == DESIGN["tasks"]["math"]["test"]
    assert (
        train.estimate_s() > TrainJob("", "math", "lora", 1e-3, 0).estimate_s()
    )  # the plan uses the model's own rates


def test_smoke_design_shrinks_every_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "DESIGN", dict(DESIGN))
    study.use_smoke_design()
    jobs = study.unique_jobs(study.stages(tmp_path))
    assert {job.limit for job in jobs if job.kind == "eval"} <= {2, 4}
    assert all(job.estimate_s() < 300 for job in jobs if job.kind == "train")
    assert DESIGN["secondary"]["limit"] == 50  # the real design is untouched


def _claim(selected, work, results, skip=frozenset()):
    job, lock = run_study.claim_next_job(selected, work, results, set(skip))
    lock.release()
    return job.name


def test_claim_next_job_skips_done_work_and_follows_stage_order(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    assert _claim(study.STAGES, work, results) == "math-lora-lr1e-3-s0"
    fake_train(TrainJob("", "math", "lora", DESIGN["provisional_lr"], 0).folder(work))
    assert _claim(study.STAGES, work, results) == "math-hyplora-lr1e-3-s0"  # trainings first
    for method in DESIGN["methods"]:
        fake_train(TrainJob("", "math", method, DESIGN["provisional_lr"], 0).folder(work))
    assert _claim(study.STAGES, work, results) == "math-lora-lr1e-3-s0--robust"
    assert _claim(("lr-grid",), work, results) == "math-lora-lr3e-4-s0"
    assert _claim(study.STAGES, work, results, {"math-lora-lr1e-3-s0--robust"}) == "math-hyplora-lr1e-3-s0--robust"


def test_a_second_runner_skips_the_job_the_first_holds_and_waits_when_none_is_left(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    first, first_lock = run_study.claim_next_job(("main-s0",), work, results, set())
    second, second_lock = run_study.claim_next_job(("main-s0",), work, results, set())
    assert (first.name, second.name) == ("math-lora-lr1e-3-s0", "math-hyplora-lr1e-3-s0")
    third, third_lock = run_study.claim_next_job(("main-s0",), work, results, set())
    # the evaluations wait for their trainings; only the base-model one could run; holding it too leaves nothing
    assert third.name == "math-dora-lr1e-3-s0"
    base, base_lock = run_study.claim_next_job(("main-s0",), work, results, set())
    assert base.name == "math-base--robust"
    assert run_study.claim_next_job(("main-s0",), work, results, set()) == (None, 4)
    for lock in (first_lock, second_lock, third_lock, base_lock):
        lock.release()
    assert _claim(("main-s0",), work, results) == "math-lora-lr1e-3-s0"


def test_a_grid_another_runner_finished_but_not_yet_copied_unblocks_its_evaluations(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    secondary = DESIGN["secondary"]
    for method in secondary["methods"]:
        for lr, loss in zip(secondary["lr_grid"], (1.4, 1.5)):
            fake_train(TrainJob("", "math", method, lr, 0, model=secondary["model"]).folder(work), val_loss=loss)
    job, lock = run_study.claim_next_job(("secondary",), work, results, set())
    lock.release()
    assert job.name == f"{secondary['model']}-math-lora-lr{study._lr_tag(secondary['lr_grid'][0])}-s0--robust"
    assert study.secondary_lr("hyplora", results) == secondary["lr_grid"][0]


def test_sync_results_copies_compact_summaries(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    run = TrainJob("main-s0", "math", "hyplora", 1e-3, 0)
    job = EvalJob("main-s0", "math", run)
    fake_train(run.folder(work), val_loss=1.9)
    fake_eval(job.folder(work), job, {ds: [1, 0, 1] for ds in job.datasets}, levels={"svamp": [0, 1, 1]})
    assert run_study.sync_results([run, job], work, results) == [run.name, job.name]
    saved_run = json.loads((results / "runs" / f"{run.name}.json").read_text())
    assert saved_run["val_curve"] == [[1, 2.4], [2, 1.9]] and saved_run["result"]["val_loss"] == 1.9
    saved_eval = json.loads((results / "evals" / f"{job.name}.json").read_text())
    assert saved_eval["items"]["svamp"] == {"correct": [1, 0, 1], "level": [0, 1, 1]}
    assert "level" not in saved_eval["items"]["gsm8k"]
    assert run_study.sync_results([run, job], work, results) == []  # already copied


@pytest.mark.slow
def test_runner_logs_compute_stops_at_the_deadline(tmp_path):
    """A job whose command outlives --max-minutes is stopped, logged as interrupted, and not copied."""
    work, results = tmp_path / "work", tmp_path / "results"

    class SleepJob(TrainJob):
        def command(self, work_dir=None):
            return [sys.executable, "-c", "import time; time.sleep(60)"]

    job = SleepJob("main-s0", "math", "lora", 1e-3, 0)
    runner = run_study.Runner(work, results, None, deadline=0.0)
    assert runner.run(job) == "interrupted"
    record = json.loads((results / "compute.jsonl").read_text())
    assert record["job"] == job.name and record["status"] == "interrupted" and record["wall_s"] < 30
    assert not (results / "runs").exists()


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


# ----------------------------------------------------------------------------- report
def test_report_from_partial_results(tmp_path):
    """Three seeds for LoRA and HypLoRA, one for DoRA, nothing else: tables, verdicts and figures follow the data."""
    results = tmp_path / "results"
    grid = DESIGN["lr_grid"]
    for method in DESIGN["methods"]:
        write_grid(results, method, {lr: 2.0 + abs(lr - grid[1]) for lr in grid})
    rng = np.random.default_rng(0)
    n = DESIGN["tasks"]["math"]["limit"]
    base = {ds: rng.integers(0, 2, n).tolist() for ds in DESIGN["tasks"]["math"]["test"]}
    for method, seeds in (("lora", (0, 1, 2)), ("hyplora", (0, 1, 2)), ("dora", (0,))):
        for seed in seeds:
            run = TrainJob("", "math", method, grid[1], seed)
            (results / "runs" / f"{run.name}.json").write_text(
                json.dumps({"result": {"val_loss": 1.5 + 0.01 * seed}, "val_curve": [[1, 2.0], [2, 1.5]]})
            )
            flip = {
                ds: [1 if method == "hyplora" and i < n // 2 else c for i, c in enumerate(v)] for ds, v in base.items()
            }
            job = EvalJob("", "math", run)
            path = results / "evals" / f"{job.name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            items = {
                ds: {"correct": c, **({"level": [i % 3 for i in range(n)]} if ds == "svamp" else {})}
                for ds, c in flip.items()
            }
            path.write_text(json.dumps({"task": "math", "summary": {"model": DESIGN["model"]}, "items": items}))
    ablation = TrainJob("", "math", "hyplora", grid[1], 0, "scale-none", (("input_scaling", "none"),))
    (results / "runs" / f"{ablation.name}.json").write_text(json.dumps({"result": {"val_loss": 1.6}, "val_curve": []}))
    (results / "evals" / f"{EvalJob('', 'math', ablation).name}.json").write_text(
        json.dumps(
            {"task": "math", "summary": {"model": DESIGN["model"]}, "items": {ds: {"correct": [0] * n} for ds in base}}
        )
    )
    cs_n = DESIGN["tasks"]["commonsense"]["limit"]
    for method, correct in (("lora", 1), ("base", 0)):  # right everywhere / wrong everywhere
        run = None if method == "base" else TrainJob("", "commonsense", method, grid[1], 0)
        (results / "evals" / f"{EvalJob('', 'commonsense', run).name}.json").write_text(
            json.dumps(
                {
                    "task": "commonsense",
                    "summary": {"model": DESIGN["model"]},
                    "items": {ds: {"correct": [correct] * cs_n} for ds in DESIGN["tasks"]["commonsense"]["test"]},
                }
            )
        )
    gemma, secondary_grid = DESIGN["secondary"]["model"], DESIGN["secondary"]["lr_grid"]
    for method, correct in (("lora", 0), ("hyplora", 1)):  # on fewer items: must not shorten the primary slices
        for lr, loss in zip(secondary_grid, (2.0 - correct, 2.5)):  # the first rate chosen
            run = TrainJob("", "math", method, lr, 0, model=gemma)
            (results / "runs" / f"{run.name}.json").write_text(
                json.dumps({"result": {"val_loss": loss}, "val_curve": [[1, 2.5], [2, loss]]})
            )
        (
            results
            / "evals"
            / f"{EvalJob('', 'math', TrainJob('', 'math', method, secondary_grid[0], 0, model=gemma)).name}.json"
        ).write_text(
            json.dumps(
                {
                    "task": "math",
                    "summary": {"model": gemma},
                    "items": {
                        ds: {"correct": [correct] * 30, "level": [0] * 30} for ds in DESIGN["secondary"]["test"]
                    },
                }
            )
        )
    (results / "evals" / f"{EvalJob('', 'math', None, model=gemma).name}.json").write_text(
        json.dumps(
            {
                "task": "math",
                "summary": {"model": gemma},
                "items": {ds: {"correct": [0] * 30} for ds in DESIGN["secondary"]["test"]},
            }
        )
    )
    modules = {
        "q_proj": {
            "norm_p5_p50_p95": [4.0, 8.0, 10.0],
            "norm_max": 12.0,
            "share_clipped_none": 0.002,
            "time_at_median": {"none": 1490.5, "unit": 1.54, "rms": 1.06},
        },
        "down_proj": {
            "norm_p5_p50_p95": [3.0, 8.0, 50.0],
            "norm_max": 2919.0,
            "share_clipped_none": 0.391,
            "time_at_median": {"none": 1490.5, "unit": 1.54, "rms": 1.02},
        },
    }
    (results / "input_norms.json").write_text(
        json.dumps({"model": "m", "examples": 8, "clip": 11.09, "modules": modules})
    )
    output = tmp_path / "docs" / "results.md"
    text = analyze.write_report(analyze.Results(results), output, tmp_path / "docs" / "results", tmp_path / "work")
    assert "base (no adapter) below; LoRA above." in text  # against always giving each slice's commonest answer
    assert (
        "| each slice's most frequent answer, always (no model) | — | — | 70.0 [" in text
    )  # 70 of BoolQ's first 100 are true
    assert output.read_text() == text
    assert "HypLoRA wins" in text  # HypLoRA is right on every item LoRA is, and more
    assert "DoRA vs LoRA over" in text and "ties" in text.split("DoRA vs LoRA over")[1].split("\n")[0]
    matched = text.split("HypLoRA − LoRA at lr 0.001: ")[1].split("\n")[0]  # seed 0 at the shared rate
    assert matched.startswith("+") and "700 items" in matched and "0 only LoRA" in matched
    assert "HypLoRA − LoRA per slice: 7 of 7 slice intervals exclude 0" in text
    assert "Not yet run: a commonsense training" in text
    assert "Harder problems" in text and "Intervals excluding 0 at level(s) 0, 1" in text
    assert "Slices with a level: svamp " in text and "HypLoRA − LoRA by level" in text
    assert "| scale-none | 1.6000 | 0.0 [0.0, 0.0] |" in text and "| k2 | not yet run | not yet run |" in text
    assert "pooled math accuracy minus the default's (paired, same items): scale-none loses, " in text
    assert "the default's sd 0.0100 over 3 seeds): scale-none +0.1000." in text
    assert f"svamp (n={n})" in text
    assert "time 1.49e+03–1.49e+03 across the layers (`unit` 1.54, `rms` at most 1.06)" in text
    assert (
        "up to 39.1% of them (`down_proj`)" in text and "| `down_proj` | 3.00 | 8.00 | 50.00 | 2919.0 | 39.1 |" in text
    )
    k = 30 * len(DESIGN["secondary"]["test"])
    assert (
        f"Secondary model ({gemma}, seed 0, one run per rate), final validation loss at the chosen rates: HypLoRA"
        " 1.0000, LoRA 2.0000."
    ) in text
    assert f"Secondary model, HypLoRA vs LoRA over {k} items: HypLoRA wins, +100.0 [+100.0, +100.0] points." in text
    assert f"| HypLoRA | 1.0000 | 2.5000 | {secondary_grid[0]:g} | 100.0 [100.0, 100.0] |" in text
    assert f"McNemar {k} vs 0 discordant items" in text
    assert "each method − the base model on the same items: LoRA ties, +0.0 [+0.0, +0.0]; HypLoRA wins, +100.0" in text
    assert (tmp_path / "docs" / "results" / "val_loss_secondary.png").stat().st_size > 0
    assert (tmp_path / "docs" / "results" / "val_loss.png").stat().st_size > 0
    assert (tmp_path / "docs" / "results" / "accuracy_math.png").stat().st_size > 0
    assert (tmp_path / "docs" / "results" / "accuracy_commonsense.png").stat().st_size > 0


def test_grown_slice_is_copied_again_and_analysed_on_common_items(tmp_path):
    """An evaluation copied at a smaller slice is replaced once the larger one exists; until then, pairs use the first n."""
    work, results = tmp_path / "work", tmp_path / "results"
    run = TrainJob("main-s0", "math", "lora", 1e-3, 0)
    job = EvalJob("main-s0", "math", run)
    fake_train(run.folder(work))
    old = results / "evals" / f"{job.name}.json"
    old.parent.mkdir(parents=True)
    old.write_text(
        json.dumps(
            {
                "task": "math",
                "summary": {"model": DESIGN["model"], "limit": 2},
                "items": {ds: {"correct": [1, 0]} for ds in job.datasets},
            }
        )
    )
    assert run_study.sync_results([job], work, results) == []  # the larger evaluation is not done yet
    other = EvalJob("main-s0", "math", TrainJob("main-s0", "math", "hyplora", 1e-3, 0))
    (results / "evals" / f"{other.name}.json").write_text(
        json.dumps(
            {
                "task": "math",
                "summary": {"model": DESIGN["model"]},
                "items": {ds: {"correct": [1, 1, 1]} for ds in job.datasets},
            }
        )
    )
    loaded = analyze.Results(results)
    assert loaded.slice_sizes[(DESIGN["model"], "math", "robust", "svamp")] == 2
    assert loaded.evals[other.name]["items"]["svamp"]["correct"] == [1, 1]
    fake_eval(job.folder(work), job, {ds: [0] * job.limit for ds in job.datasets})
    assert run_study.sync_results([job], work, results) == [job.name]
    assert len(json.loads(old.read_text())["items"]["svamp"]["correct"]) == job.limit
