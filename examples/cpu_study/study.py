"""The CPU study's design (every number), its jobs by stage, and where each output lives.

`DESIGN` holds every setting; `stages()` turns it into the ordered job list. A job is a
`TrainJob` (`hyplora train`) or an `EvalJob` (`hyplora eval`); each knows its command line, its
folder under `WORK_DIR` (ignored by git: adapters, checkpoints, per-item JSONL) and whether its
outputs already exist. Small summaries of finished jobs are copied to `RESULTS_DIR` (committed),
and everything downstream (learning-rate choice, analysis) reads those summaries.

Stages, in run order:

1. `main-s0`: LoRA, DoRA, HypLoRA on the math mixture, seed 0, at the provisional learning rate,
   then each evaluated on the math slices, and the base model on the same slices.
2. `lr-grid`: the other grid learning rates, seed 0 (validation loss only), and one more point past the end of
   the grid where a method's lowest loss lies at that end.
3. `seeds`: seeds 1 and 2 at the chosen learning rates; then every seed's run at the chosen rates is evaluated
   (the seed-0 run is already evaluated where the provisional rate won); the paper-mode slice.
4. `commonsense`: the three methods on the commonsense mixture at their math-chosen learning
   rates, seed 0, evaluated on the commonsense slices; the base model on the same slices.
5. `ablations`: HypLoRA variants (input scaling, learned curvature, K), seed 0, evaluated.
6. `secondary`: LoRA and HypLoRA on the secondary model (Gemma 3 270M base), math, seed 0, each trained at the
   two rates the primary model's grid chose (a smaller grid), the lower final validation loss chosen, that run
   evaluated on shorter slices; the base model on the same slices.

Within a stage the trainings run before the evaluations. A job whose learning rate is chosen by
the grid is *blocked* until the grid's summaries exist.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

STUDY_DIR = Path(__file__).resolve().parent
REPO_DIR = STUDY_DIR.parents[1]
RESULTS_DIR = STUDY_DIR / "results"
WORK_DIR = REPO_DIR / "runs" / "cpu_study"

DESIGN = {
    "model": "smollm2-135m",
    "methods": ("lora", "hyplora", "dora"),  # run order within a stage: the primary comparison first
    # the paper's adapter settings, identical for every method (the reference scripts varied alpha)
    "adapter": {
        "rank": 32,
        "alpha": 64.0,
        "dropout": 0.05,
        "target_modules": "q_proj,k_proj,v_proj,up_proj,down_proj",
    },
    # one pass over max_steps x batch_size examples: the same examples, in the same order, for every method
    "schedule": {
        "max_steps": 48,
        "batch_size": 4,
        "micro_batch_size": 4,
        "cutoff_len": 256,
        "warmup_steps": 4,
        "val_size": 40,
        "eval_steps": 10,  # 10, 20, 30, 40 and the recipe's final pass at 48: five points, none repeated
        "save_steps": 10,
        "logging_steps": 2,
        "save_total_limit": 1,
        # the mixture shuffle, validation carve-out and batch order: the same for every seed, so seeds vary the
        # adapter's initialisation and dropout only, and validation losses are comparable across seeds
        "data_seed": 0,
    },
    "lr_grid": (3e-4, 1e-3, 3e-3),
    # a method whose lowest loss is at an end of the grid is also trained at the next point past that end: no method
    # is compared at a rate beyond which its own optimum lies (HypLoRA's was at 3e-3 on the first grid)
    "lr_grid_beyond": (1e-4, 1e-2),
    "provisional_lr": 1e-3,
    "seeds": (0, 1, 2),
    "tasks": {
        "math": {
            "train": "math",
            "test": ("svamp", "mawps", "gsm8k", "aqua", "multiarith", "addsub", "singleeq"),
            "limit": 100,
        },
        "commonsense": {"train": "commonsense", "test": ("boolq", "arc-e", "arc-c", "obqa"), "limit": 100},
    },
    # robust extraction, greedy decoding, the default new-token budgets (256 math, 32 commonsense)
    # batches of 50: a decoding step of 50 rows cost 1.3 s, of 25 rows 0.85 s, of 4 rows 0.54 s
    # DoRA adapters after the first (main-s0) evaluation are merged into the weights before decoding (`--merge`): the
    # same function up to float32 rounding (the seed-0 DoRA run merged gave the unmerged outputs on 50/50 SVAMP items,
    # token for token); unmerged, PEFT recomputes DoRA's weight norm at every decoding step (5.7 s per item vs LoRA's 2.1)
    "eval": {"mode": "robust", "batch_size": 50, "merge_dora_after": "main-s0"},
    # LLM-Adapters' protocol (4 beams, its extraction rules) on one slice, for LoRA and HypLoRA seed 0
    "paper_slice": {"dataset": "svamp", "limit": 20, "methods": ("lora", "hyplora")},
    # HypLoRA options changed one at a time from HypLoraConfig's defaults (unit scaling, K = 1 fixed)
    "ablations": {
        "scale-none": {"input_scaling": "none"},
        "scale-rms": {"input_scaling": "rms"},
        "learn-k": {"learn_curvature": True},
        "k0.5": {"curvature": 0.5},
        "k2": {"curvature": 2.0},
    },
    # one thread per job: on 2 cores shared with other jobs, 2 OpenMP threads made a decoding step 18x slower
    # (threads wait at every barrier for a descheduled sibling); see MEASUREMENTS
    "threads": 1,
    # one job per core, from this machine's jobs (results/compute.jsonl, load 2-5); the plan's estimates only. Math
    # evaluations of 700 items took 2.0-2.2 s per item for LoRA/HypLoRA, 3.1 for the base model (it rambles to the
    # token limit) and 5.7 for unmerged DoRA at load 3-5; at load 2 (only the two runners): LoRA 1.3, HypLoRA 1.6,
    # merged DoRA 1.1
    "seconds_per_step": 11.0,
    "seconds_per_val_example": 0.5,
    "seconds_per_eval_item": {"math": 1.8, "commonsense": 1.0, "paper": 12.0},
    "seconds_load": 40.0,
    # Gemma 3 270M base, as far as the budget allows: a two-point grid (the rates the primary grid chose), one seed, the
    # same schedule; evaluated on shorter slices (its vocabulary is 262k tokens against SmolLM2's 49k: 5x the output
    # logits per decoding step). Its rates, from its first jobs at load 2-3: a training 26 min wall (5 validation
    # passes of 92 s: 2.3 s per example, so ~22 s per step); 50 SVAMP items in 2.5 min for a trained adapter (3.0 s per
    # item), 5.3 min for the base model, which decodes every item to the 256-token limit (6.4 s per item)
    "secondary": {
        "model": "gemma3-270m",
        "methods": ("lora", "hyplora"),
        "lr_grid": (1e-3, 3e-3),
        "test": ("svamp", "mawps", "gsm8k", "aqua", "multiarith", "addsub", "singleeq"),
        "limit": 50,
        "seconds_per_step": 22.0,
        "seconds_per_val_example": 2.3,
        "seconds_per_eval_item": {"math": 4.0},
    },
}
# Timings behind the design choices, measured here on 2026-11-26 with other engineers' jobs running (load 5-8).
MEASUREMENTS = {
    "decode step, batch 4, base model, 1 thread": "541 ms",
    "decode step, batch 4, base model, 2 threads": "9907 ms",
    "decode step, batch 25 / 50, base model, 1 thread": "847 ms / 1326 ms",
    "training step, batch 4, LoRA, 1 thread": "22-38 s",
    "validation pass, 40 examples, LoRA, 1 thread": "93 s",
    "training step, batch 8, HypLoRA, 2 threads": "55-120 s",
    "eval, batch 4, 256 new tokens, 2-step smoke adapter (rambles to 256 tokens), 1 thread": "15-37 s per item",
    "eval, 7 x 40 items, batch 40, trained LoRA (mostly stops early), 1 thread, load ~2.5": "6.5 min (1.0-2.3 s per item)",
}
STAGES = ("main-s0", "lr-grid", "seeds", "commonsense", "ablations", "secondary")
SMOKE = {
    "schedule": {
        **DESIGN["schedule"],
        "max_steps": 2,
        "warmup_steps": 1,
        "val_size": 4,
        "eval_steps": 1,
        "save_steps": 1,
        "logging_steps": 1,
    },
    "lr_grid": (1e-3, 3e-3),
    "tasks": {task: {**spec, "limit": 4} for task, spec in DESIGN["tasks"].items()},
    "paper_slice": {**DESIGN["paper_slice"], "limit": 2},
    "secondary": {**DESIGN["secondary"], "limit": 4},
}


def use_smoke_design() -> None:
    """Shrink `DESIGN` in place to a minutes-long run of the whole flow (2 steps, 4 items per slice, a 2-point grid)."""
    DESIGN.update(SMOKE)


def _lr_tag(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def adapter_done(folder: Path) -> bool:
    """A finished `hyplora train` run: the final adapter and a `train_args.json` holding the final result."""
    args_file = folder / "train_args.json"
    if not (folder / "adapter_model.safetensors").is_file() or not args_file.is_file():
        return False
    try:
        return "result" in json.loads(args_file.read_text())
    except json.JSONDecodeError:
        return False


def has_checkpoint(folder: Path) -> bool:
    """True when `folder` holds a complete `checkpoint-<step>` (the recipe's `last_checkpoint` finds one)."""
    from hyplora.harness.training import last_checkpoint

    return last_checkpoint(folder) is not None


@dataclass(frozen=True)
class TrainJob:
    """One `hyplora train` run. `lr=None`: the learning rate the grid chose for (task, method), not yet known.
    `model=""`: the primary model (`DESIGN["model"]`); another model's job names start with its name."""

    stage: str
    task: str
    method: str
    lr: float | None
    seed: int
    variant: str = ""
    options: tuple[tuple[str, object], ...] = ()
    model: str = ""
    kind: str = field(default="train", init=False)

    @property
    def name(self) -> str:
        variant = f"-{self.variant}" if self.variant else ""
        lr = f"lr{_lr_tag(self.lr)}" if self.lr is not None else "lr-chosen"
        return f"{_model_prefix(self.model)}{self.task}-{self.method}{variant}-{lr}-s{self.seed}"

    def folder(self, work_dir: Path = WORK_DIR) -> Path:
        return work_dir / "train" / self.name

    @property
    def blocked(self) -> bool:
        return self.lr is None

    def state(self, work_dir: Path = WORK_DIR) -> str:
        """`done`, `partial` (a checkpoint to resume from), `new`, or `blocked` (learning rate unknown)."""
        if self.blocked:
            return "blocked"
        folder = self.folder(work_dir)
        if adapter_done(folder):
            return "done"
        return "partial" if has_checkpoint(folder) else "new"

    def command(self, work_dir: Path = WORK_DIR) -> list[str]:
        if self.blocked:
            raise RuntimeError(f"{self.name}: the learning rate is not chosen yet")
        d = DESIGN
        s = d["schedule"]
        adapter = d["adapter"]
        command = [
            sys.executable,
            "-m",
            "hyplora.cli",
            "train",
            "--model",
            self.model or d["model"],
            "--data",
            d["tasks"][self.task]["train"],
            "--method",
            self.method,
            "--output-dir",
            str(self.folder(work_dir)),
            "--rank",
            str(adapter["rank"]),
            "--alpha",
            str(adapter["alpha"]),
            "--dropout",
            str(adapter["dropout"]),
            "--target-modules",
            adapter["target_modules"],
            "--lr",
            repr(self.lr),
            "--seed",
            str(self.seed),
            "--max-steps",
            str(s["max_steps"]),
            "--limit",
            str(s["max_steps"] * s["batch_size"]),
            "--batch-size",
            str(s["batch_size"]),
            "--micro-batch-size",
            str(s["micro_batch_size"]),
            "--cutoff-len",
            str(s["cutoff_len"]),
            "--warmup-steps",
            str(s["warmup_steps"]),
            "--val-size",
            str(s["val_size"]),
            "--eval-steps",
            str(s["eval_steps"]),
            "--save-steps",
            str(s["save_steps"]),
            "--logging-steps",
            str(s["logging_steps"]),
            "--save-total-limit",
            str(s["save_total_limit"]),
            "--data-seed",
            str(s["data_seed"]),
        ]
        for option, value in self.options:
            flag = "--" + option.replace("_", "-")
            if isinstance(value, bool):
                command.append(flag if value else "--no-" + flag[2:])
            else:
                command += [flag, str(value)]
        if self.state(work_dir) == "partial":
            command.append("--resume")
        return command

    def estimate_s(self, work_dir: Path | None = None) -> float:
        """Seconds to run (what is left of) this training, from the contended rates in `DESIGN`."""
        from hyplora.harness.training import last_checkpoint

        rates, s = _rates(self.model), DESIGN["schedule"]
        checkpoint = last_checkpoint(self.folder(work_dir)) if work_dir is not None and not self.blocked else None
        done = int(checkpoint.name.split("-")[-1]) if checkpoint is not None else 0
        val_passes = (s["max_steps"] // s["eval_steps"] - done // s["eval_steps"]) + 1
        return (
            DESIGN["seconds_load"]
            + (s["max_steps"] - done) * rates["seconds_per_step"]
            + val_passes * s["val_size"] * rates["seconds_per_val_example"]
        )


@dataclass(frozen=True)
class EvalJob:
    """One `hyplora eval` of a trained run (`run`) or of the base model (`run=None`, `model`; `""`: the primary one).

    The secondary model is evaluated on `DESIGN["secondary"]`'s slice, the primary one on its task's slices.
    """

    stage: str
    task: str
    run: TrainJob | None
    protocol: str = "robust"
    model: str = ""
    kind: str = field(default="eval", init=False)

    def __post_init__(self):
        if self.run is not None:
            object.__setattr__(self, "model", self.run.model)

    @property
    def name(self) -> str:
        subject = self.run.name if self.run is not None else f"{_model_prefix(self.model)}{self.task}-base"
        return f"{subject}--{self.protocol}"

    @property
    def datasets(self) -> tuple[str, ...]:
        if self.protocol == "paper":
            return (DESIGN["paper_slice"]["dataset"],)
        return DESIGN["secondary"]["test"] if self.model else DESIGN["tasks"][self.task]["test"]

    @property
    def limit(self) -> int:
        if self.protocol == "paper":
            return DESIGN["paper_slice"]["limit"]
        return DESIGN["secondary"]["limit"] if self.model else DESIGN["tasks"][self.task]["limit"]

    def folder(self, work_dir: Path = WORK_DIR) -> Path:
        return work_dir / "eval" / self.name

    @property
    def blocked(self) -> bool:
        return self.run is not None and self.run.blocked

    def state(self, work_dir: Path = WORK_DIR) -> str:
        """`done` (a summary for exactly these sets, slice and mode), `new`, `waiting` (its run is not trained) or `blocked`."""
        if self.blocked:
            return "blocked"
        summary = read_json(self.folder(work_dir) / "summary.json")
        if (
            summary is not None
            and summary.get("mode") == self.protocol
            and summary.get("limit") == self.limit
            and set(summary.get("datasets", {})) == set(self.datasets)
        ):
            return "done"
        if self.run is not None and self.run.state(work_dir) != "done":
            return "waiting"
        return "new"

    def command(self, work_dir: Path = WORK_DIR, levels_dir: Path | None = None) -> list[str]:
        d = DESIGN
        command = [
            sys.executable,
            "-m",
            "hyplora.cli",
            "eval",
            "--model",
            self.model or d["model"],
            "--datasets",
            *self.datasets,
            "--limit",
            str(self.limit),
            "--mode",
            self.protocol,
            "--batch-size",
            str(d["eval"]["batch_size"]),
            "--output-dir",
            str(self.folder(work_dir)),
        ]
        if self.run is not None:
            command += ["--adapter", str(self.run.folder(work_dir))]
            if self.merged:
                command.append("--merge")
        if levels_dir is not None:
            command += ["--levels-dir", str(levels_dir)]
        return command

    @property
    def merged(self) -> bool:
        """DoRA evaluations after `DESIGN["eval"]["merge_dora_after"]` decode with the adapter merged."""
        return (
            self.run is not None
            and self.run.method == "dora"
            and STAGES.index(self.stage) > STAGES.index(DESIGN["eval"]["merge_dora_after"])
        )

    def estimate_s(self, work_dir: Path | None = None) -> float:
        """Seconds to run this evaluation (items already generated are not counted off)."""
        per_item = _rates(self.model)["seconds_per_eval_item"]["paper" if self.protocol == "paper" else self.task]
        return DESIGN["seconds_load"] + len(self.datasets) * self.limit * per_item


def _model_prefix(model: str) -> str:
    return f"{model}-" if model else ""


def _rates(model: str) -> dict:
    """The plan's seconds per step / validation example / evaluation item for `model` (`""`: the primary one)."""
    return DESIGN["secondary"] if model else DESIGN


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None when the file is missing or unreadable (half-written)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_summary(name: str, results_dir: Path = RESULTS_DIR) -> dict | None:
    return read_json(results_dir / "runs" / f"{name}.json")


def _grid_losses(task: str, method: str, rates, results_dir: Path, model: str = "") -> dict[float, float] | None:
    """Final validation loss per learning rate (seed 0, default options); None while any of `rates` has no summary."""
    losses = {}
    for lr in rates:
        summary = run_summary(TrainJob("", task, method, lr, 0, model=model).name, results_dir)
        if summary is None or summary.get("result", {}).get("val_loss") is None:
            return None
        losses[lr] = summary["result"]["val_loss"]
    return losses


def lr_grid(task: str, method: str, results_dir: Path = RESULTS_DIR) -> tuple[float, ...]:
    """The learning rates (task, method) is trained at: `DESIGN["lr_grid"]`, plus the point of `lr_grid_beyond` past
    the end where the grid's lowest loss lies, if it lies at an end (one step, so the grid stays bounded)."""
    grid = tuple(DESIGN["lr_grid"])
    losses = _grid_losses(task, method, grid, results_dir)
    if losses is None:
        return grid
    best, (below, above) = min(losses, key=losses.get), DESIGN["lr_grid_beyond"]
    return (below, *grid) if best == grid[0] else (*grid, above) if best == grid[-1] else grid


def chosen_lr(task: str, method: str, results_dir: Path = RESULTS_DIR) -> float | None:
    """The learning rate of `lr_grid` with the lowest final validation loss for (task, method), seed 0, default options.

    None until every point of the grid (the extension included, where one is due) has a summary: a partial grid never picks.
    """
    losses = _grid_losses(task, method, lr_grid(task, method, results_dir), results_dir)
    return None if losses is None else min(losses, key=losses.get)


def secondary_lr(method: str, results_dir: Path = RESULTS_DIR) -> float | None:
    """The rate of `DESIGN["secondary"]["lr_grid"]` with the lowest final validation loss on the secondary model (math,
    seed 0); None until both runs have a summary. No extension past the grid's ends: the budget has no room for it."""
    secondary = DESIGN["secondary"]
    losses = _grid_losses("math", method, secondary["lr_grid"], results_dir, secondary["model"])
    return None if losses is None else min(losses, key=losses.get)


def stages(results_dir: Path = RESULTS_DIR) -> dict[str, list]:
    """The jobs of every stage, in run order; learning rates chosen by the grid are read from `results_dir`."""
    d = DESIGN
    methods, provisional = d["methods"], d["provisional_lr"]
    chosen = {method: chosen_lr("math", method, results_dir) for method in methods}

    def trained_and_evaluated(stage, task, method, lr, seed, variant="", options=(), model=""):
        run = TrainJob(stage, task, method, lr, seed, variant, tuple(options), model)
        return [run, EvalJob(stage, task, run)]

    plan = {name: [] for name in STAGES}
    for method in methods:
        plan["main-s0"] += trained_and_evaluated("main-s0", "math", method, provisional, 0)
    plan["main-s0"].append(EvalJob("main-s0", "math", None))

    for method in methods:
        plan["lr-grid"] += [
            TrainJob("lr-grid", "math", method, lr, 0)
            for lr in lr_grid("math", method, results_dir)
            if lr != provisional
        ]
    # the seed-0 run at each chosen rate is evaluated with the other seeds (nothing new where the provisional rate
    # won), after their trainings: the validation losses of all seeds come first
    for method in methods:
        plan["seeds"].append(EvalJob("seeds", "math", TrainJob("seeds", "math", method, chosen[method], 0)))
    for seed in d["seeds"][1:]:
        for method in methods:
            plan["seeds"] += trained_and_evaluated("seeds", "math", method, chosen[method], seed)
    for method in d["paper_slice"]["methods"]:
        plan["seeds"].append(EvalJob("seeds", "math", TrainJob("seeds", "math", method, chosen[method], 0), "paper"))
    plan["seeds"].append(EvalJob("seeds", "math", None, "paper"))

    for variant, options in d["ablations"].items():
        plan["ablations"] += trained_and_evaluated(
            "ablations", "math", "hyplora", chosen["hyplora"], 0, variant, sorted(options.items())
        )

    for method in methods:
        plan["commonsense"] += trained_and_evaluated("commonsense", "commonsense", method, chosen[method], 0)
    plan["commonsense"].append(EvalJob("commonsense", "commonsense", None))

    secondary = d["secondary"]
    for method in secondary["methods"]:
        plan["secondary"] += [
            TrainJob("secondary", "math", method, lr, 0, model=secondary["model"]) for lr in secondary["lr_grid"]
        ]
        run = TrainJob("secondary", "math", method, secondary_lr(method, results_dir), 0, model=secondary["model"])
        plan["secondary"].append(EvalJob("secondary", "math", run))
    plan["secondary"].append(EvalJob("secondary", "math", None, model=secondary["model"]))
    # within a stage, train first: validation losses (the low-noise signal) arrive before the slower evaluations
    return {stage: sorted(jobs, key=lambda job: job.kind == "eval") for stage, jobs in plan.items()}


def unique_jobs(plan: dict[str, list], selected: tuple[str, ...] = STAGES) -> list:
    """The jobs of the selected stages in order, each name once (a later stage may repeat an earlier job)."""
    seen, jobs = set(), []
    for stage in selected:
        for job in plan[stage]:
            if job.name not in seen:
                seen.add(job.name)
                jobs.append(job)
    return jobs


def test_overlap(task: str) -> dict:
    """Test-slice items whose question (`hyplora.harness.data.question_key`) occurs in the task's training data.

    The training loader already drops training records that repeat any test question, so every
    count here should be 0; the study checks it rather than assuming it. Items repeated across
    two test slices are listed too (they count twice in pooled accuracy).

    Returns:
        `dict`: per test set `{"slice": n, "in_training": [indices]}`, and `"across_slices"`:
        `[[set, index, other set, other index], ...]`.
    """
    from hyplora.harness.data import domain, load_test_set, load_train_set, question_key

    spec = DESIGN["tasks"][task]
    domain_name = domain(spec["train"])
    train_set = load_train_set(spec["train"], seed=0)
    train_keys = {question_key(record["instruction"], domain_name) for record in train_set.records}
    report, first_seen, across = {}, {}, []
    for name in spec["test"]:
        records = load_test_set(name, spec["limit"])
        keys = [question_key(record["instruction"], domain_name) for record in records]
        report[name] = {"slice": len(records), "in_training": [i for i, key in enumerate(keys) if key in train_keys]}
        for index, key in enumerate(keys):
            if key in first_seen and first_seen[key][0] != name:
                across.append([name, index, *first_seen[key]])
            first_seen.setdefault(key, (name, index))
    return {
        "train": spec["train"],
        "train_records": len(train_set.records),
        "dropped_from_training": train_set.dropped,
        "tests": report,
        "across_slices": across,
    }
