"""Every run of the CPU study, as data: `GRID` lists each `hyplora train` (`Train`) and `hyplora eval` (`Eval`).

A run's settings are the shared `ADAPTER` and `SCHEDULE`, its training budget (examples, one epoch) and its own
`options` (extra `hyplora train` flags, which may also override a `SCHEDULE` entry). A learning rate given as
`Best(stage)` is the rate with the lowest final validation loss among that stage's seed-0 runs of the same model,
method and variant: it resolves once every one of them has a summary. A method whose lowest loss lies at an end of
its rates gets one more line past that end (round one: HypLoRA at 1e-2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

STUDY_DIR = Path(__file__).resolve().parent
RESULTS_DIR = STUDY_DIR / "results"

MODEL = "smollm2-135m"
GEMMA = "gemma3-270m"
ADAPTER = {"rank": 32, "alpha": 64.0, "dropout": 0.05, "target_modules": "q_proj,k_proj,v_proj,up_proj,down_proj"}
# the data seed fixes the mixture shuffle, the validation carve-out and the batch order: every run sees the same data
SCHEDULE = {
    "batch_size": 4,
    "micro_batch_size": 4,
    "cutoff_len": 256,
    "warmup_steps": 4,
    "val_size": 40,
    "eval_steps": 10,
    "save_steps": 10,
    "logging_steps": 2,
    "save_total_limit": 1,
    "data_seed": 0,
}
BUDGET = 192  # round one's training examples: 48 steps of 4
MATH = ("svamp", "mawps", "gsm8k", "aqua", "multiarith", "addsub", "singleeq")
COMMONSENSE = ("boolq", "arc-e", "arc-c", "obqa")
METHODS = ("lora", "hyplora", "dora")


@dataclass(frozen=True)
class Best:
    """The rate of `stage`'s seed-0 runs (same model and method; `variant`, default the run's own) with the lowest
    final validation loss."""

    stage: str
    variant: str | None = None


@dataclass(frozen=True)
class Train:
    """One `hyplora train` run of `budget` examples (one epoch); its summary is `results/runs/<name>.json`."""

    stage: str
    method: str
    lr: float | Best
    seed: int = 0
    task: str = "math"
    model: str = MODEL
    budget: int = BUDGET
    variant: str = ""
    options: dict = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        variant = f"-{self.variant}" if self.variant else ""
        budget = "" if self.budget == BUDGET else f"-n{self.budget}"
        return f"{model_prefix(self.model)}{self.task}-{self.method}{variant}{budget}-lr{lr_tag(self.lr)}-s{self.seed}"

    def flags(self) -> dict:
        """`hyplora train` options (without `--output-dir`), `options` last."""
        settings = {**SCHEDULE, **self.options}
        steps = self.budget // settings["batch_size"]
        return {
            "model": self.model,
            "data": self.task,
            "method": self.method,
            **ADAPTER,
            "lr": self.lr,
            "seed": self.seed,
            "max_steps": steps,
            "limit": steps * settings["batch_size"],
            **settings,
        }


@dataclass(frozen=True)
class Eval:
    """One `hyplora eval` of a trained run (`run`) or of the base `model` (`run=None`) on the first `limit` items of
    each of `datasets`; its summary is `results/evals/<name>.json`."""

    stage: str
    run: Train | None
    datasets: tuple[str, ...]
    limit: int
    mode: str = "robust"
    model: str = MODEL
    task: str = "math"
    merge: bool = False  # a LoRA / DoRA adapter merged into the weights before decoding (DoRA: 5x faster)

    def __post_init__(self):
        if self.run is not None:
            object.__setattr__(self, "model", self.run.model)
            object.__setattr__(self, "task", self.run.task)

    @property
    def name(self) -> str:
        return f"{self.run.name if self.run else f'{model_prefix(self.model)}{self.task}-base'}--{self.mode}"


def model_prefix(model: str) -> str:
    """Names start with the model's name (a folder's last part), except the primary model's."""
    return "" if model == MODEL else f"{Path(model).name}-"


def lr_tag(lr: float | Best) -> str:
    return f"{lr:.0e}".replace("e-0", "e-") if isinstance(lr, float) else "-best"


def read_summary(kind: str, name: str, results_dir: Path = RESULTS_DIR) -> dict | None:
    """`results_dir/<kind>/<name>.json` (`kind`: `runs` or `evals`), or None when it does not exist."""
    path = results_dir / kind / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def resolve(job: Train | Eval, results_dir: Path = RESULTS_DIR, grid: list | None = None) -> Train | Eval | None:
    """`job` with its `Best` learning rate replaced by the rate chosen among `grid`'s runs (default `GRID`); None while
    that rate is not known yet."""
    if isinstance(job, Eval):
        run = job.run and resolve(job.run, results_dir, grid)
        return replace(job, run=run) if run or job.run is None else None
    if not isinstance(job.lr, Best):
        return job
    variant = job.lr.variant if job.lr.variant is not None else job.variant
    rates = {
        run.lr: read_summary("runs", run.name, results_dir)
        for run in (GRID if grid is None else grid)
        if isinstance(run, Train)
        and (run.stage, run.model, run.method, run.variant, run.seed)
        == (job.lr.stage, job.model, job.method, variant, 0)
    }
    if not rates or None in rates.values():
        return None
    best = min(rates, key=lambda lr: rates[lr]["result"]["val_loss"])
    return replace(job, lr=best)


def expand(grid: list, results_dir: Path = RESULTS_DIR, stages=None) -> tuple[list, list]:
    """The jobs of `grid` (of `stages`, default all) with their rates resolved, each name once (the first line wins),
    and the lines whose rate is not known yet."""
    jobs, pending, seen = [], [], set()
    for line in grid:
        if stages is not None and line.stage not in stages:
            continue
        job = resolve(line, results_dir, grid)
        if job is None:
            pending.append(line)
        elif job.name not in seen:
            seen.add(job.name)
            jobs.append(job)
    return jobs, pending


def _runs_and_evals(stage, methods, lr, datasets, limit, seeds=(0,), **train) -> list:
    """`Train` of each method and seed, each followed by its `Eval` (DoRA merged)."""
    lines = []
    for seed in seeds:
        for method in methods:
            run = Train(stage, method, lr, seed, **train)
            lines += [run, Eval(stage, run, datasets, limit, merge=method == "dora")]
    return lines


ABLATIONS = {
    "scale-none": {"input_scaling": "none"},
    "scale-rms": {"input_scaling": "rms"},
    "learn-k": {"learn_curvature": True},
    "k0.5": {"curvature": 0.5},
    "k2": {"curvature": 2.0},
}

GRID = [
    # ---- round one: 192 examples, SmolLM2-135M-Instruct unless a model is named
    *(Train("lr-grid", method, lr) for method in METHODS for lr in (3e-4, 1e-3, 3e-3)),
    Train("lr-grid", "hyplora", 1e-2),  # HypLoRA's lowest loss lay at 3e-3, the grid's top end
    # every method at the rate they all started at, seed 0, evaluated unmerged
    *(Eval("same-lr", Train("lr-grid", method, 1e-3), MATH, 100) for method in METHODS),
    Eval("same-lr", None, MATH, 100),
    *_runs_and_evals("seeds", METHODS, Best("lr-grid"), MATH, 100, seeds=(0, 1, 2)),
    *(Eval("paper", Train("lr-grid", m, Best("lr-grid")), ("svamp",), 20, "paper") for m in ("lora", "hyplora")),
    Eval("paper", None, ("svamp",), 20, "paper"),
    *(
        line
        for variant, options in ABLATIONS.items()
        for line in _runs_and_evals(
            "ablations", ("hyplora",), Best("lr-grid", variant=""), MATH, 100, variant=variant, options=options
        )
    ),
    *_runs_and_evals("commonsense", METHODS, Best("lr-grid"), COMMONSENSE, 100, task="commonsense"),
    Eval("commonsense", None, COMMONSENSE, 100, task="commonsense"),
    *(Train("gemma-lr", method, lr, model=GEMMA) for method in ("lora", "hyplora") for lr in (1e-3, 3e-3)),
    *(Eval("gemma", Train("gemma-lr", m, Best("gemma-lr"), model=GEMMA), MATH, 50) for m in ("lora", "hyplora")),
    Eval("gemma", None, MATH, 50, model=GEMMA),
    Eval("gemma", Train("gemma-lr", "hyplora", 3e-3, model=GEMMA), ("svamp",), 50),  # before its rate was chosen
]

# ---- round two (docs/results.md, "Round two"): 768 and 1536 examples, the llr form beside the seed form and LoRA
S768, S1536, LLR = {"eval_steps": 48, "save_steps": 48}, {"eval_steps": 96, "save_steps": 48}, {"form": "llr"}
METHODS_2 = (("lora", "", {}), ("hyplora", "", {}), ("hyplora", "llr", LLR))
GRID += [
    *(Train("lr-grid", "hyplora", lr, variant="llr", options=LLR) for lr in (1e-3, 3e-3, 1e-2)),
    Train("lr-grid", "hyplora", 3e-2, variant="llr", options=LLR),  # llr's lowest loss lay at 1e-2, the top end
    Train("seeds", "hyplora", Best("lr-grid"), variant="llr", options=LLR),
    *(
        Train("ablations", "hyplora", Best("lr-grid", variant=""), variant=f, options={"form": f})
        for f in ("llr-official", "stereographic")
    ),
    # each method's 192 choice and its neighbours (llr chose 1e-2 at 192: 1.3289; 3e-3 1.3640, 3e-2 1.3764); the
    # choices first, so that an interrupted round has every method's central rate before any neighbour
    *(
        Train("lr-768", m, rates[i], budget=768, variant=v, options={**S768, **o})
        for i in range(3)
        for m, v, o, rates in (
            ("lora", "", {}, (1e-3, 3e-4, 3e-3)),
            ("hyplora", "", {}, (3e-3, 1e-3, 1e-2)),
            ("hyplora", "llr", LLR, (1e-2, 3e-3, 3e-2)),
        )
    ),
    *(
        Train(stage, m, Best("lr-768"), seed, budget=n, variant=v, options={**schedule, **o})
        for stage, n, schedule, seeds in (("seeds-768", 768, S768, (0, 1)), ("n1536", 1536, S1536, (0,)))
        for m, v, o in METHODS_2
        for seed in seeds
    ),
    *(
        Eval("n1536", Train("n1536", m, Best("lr-768"), budget=1536, variant=v, options={**S1536, **o}), MATH, 100)
        for m, v, o in METHODS_2
    ),
]
