"""Run the CPU study (HypLoRA vs LoRA vs DoRA on SmolLM2-135M-Instruct) with one resumable command.

Every job calls the user-facing CLI (`python -m hyplora.cli train` / `eval`) in a subprocess.
A job whose outputs exist is skipped; an interrupted training resumes from its last checkpoint
(`--resume`); an interrupted evaluation reuses its finished items. After each job its small
summary is copied to `examples/cpu_study/results/` (committed); adapters, checkpoints and
per-item JSONL stay under `runs/cpu_study/` (ignored by git). Run it again to continue.

    python examples/cpu_study/run_study.py --plan-only            # the compute plan, nothing runs
    nohup python examples/cpu_study/run_study.py --max-minutes 100 > runs/cpu_study.log 2>&1 &
    nohup python examples/cpu_study/run_study.py --max-minutes 100 > runs/cpu_study-2.log 2>&1 &   # a second core
    python examples/cpu_study/run_study.py --stage main-s0 lr-grid
    python examples/cpu_study/analyze.py                           # docs/results.md from what exists
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import (  # noqa: E402
    DESIGN,
    REPO_DIR,
    RESULTS_DIR,
    STAGES,
    WORK_DIR,
    EvalJob,
    TrainJob,
    read_json,
    stages,
    test_overlap,
    unique_jobs,
    use_smoke_design,
)

from hyplora.errors import InputError  # noqa: E402

COMPUTE_LOG = "compute.jsonl"


# ----------------------------------------------------------------------------- summaries
def _write_json(path: Path, value, indent: int | None = 1) -> None:
    from hyplora.harness.evaluation import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(value, indent=indent) + "\n")


def train_summary(job: TrainJob, work_dir: Path) -> dict:
    """The run's `train_args.json` (options, run facts, final losses) and its loss curves from `loss_log.jsonl`."""
    folder = job.folder(work_dir)
    record = json.loads((folder / "train_args.json").read_text())
    log = [json.loads(line) for line in (folder / "loss_log.jsonl").read_text().splitlines() if line.strip()]
    return {
        "name": job.name,
        "task": job.task,
        "method": job.method,
        "lr": job.lr,
        "seed": job.seed,
        "variant": job.variant,
        "options": dict(job.options),
        **record,
        # the recipe's final validation pass repeats the Trainer's last one when the steps line up: one point per step
        "val_curve": sorted({entry["step"]: entry["eval_loss"] for entry in log if "eval_loss" in entry}.items()),
        "train_curve": [[entry["step"], entry["loss"]] for entry in log if "loss" in entry],
    }


def eval_summary(job: EvalJob, work_dir: Path) -> dict:
    """`summary.json` plus per-item correctness (0/1 lists, in item order) and levels where the data has them."""
    from hyplora.harness.evaluation import read_items

    folder = job.folder(work_dir)
    summary = json.loads((folder / "summary.json").read_text())
    items = {}
    for label in summary["datasets"]:
        rows = sorted(read_items(folder / f"{label}.jsonl"), key=lambda item: item["index"])[: job.limit]
        items[label] = {"correct": [int(row["correct"]) for row in rows]}
        if rows and all("level" in row for row in rows):
            items[label]["level"] = [row["level"] for row in rows]
    return {
        "name": job.name,
        "task": job.task,
        "protocol": job.protocol,
        "run": job.run.name if job.run is not None else None,
        "summary": summary,
        "items": items,
    }


def sync_results(jobs, work_dir: Path, results_dir: Path) -> list[str]:
    """Copy the summary of every finished job that has none in `results_dir` yet; return their names."""
    copied = []
    for job in jobs:
        subfolder = "runs" if job.kind == "train" else "evals"
        target = results_dir / subfolder / f"{job.name}.json"
        copied_before = read_json(target)
        if copied_before is not None and (
            job.kind == "train"
            or (
                copied_before["summary"].get("limit") == job.limit and set(copied_before["items"]) == set(job.datasets)
            )
        ):
            continue  # an evaluation copied before its slices grew is copied again once the larger one is done
        if job.state(work_dir) != "done":
            continue
        if job.kind == "train":
            _write_json(target, train_summary(job, work_dir))
        else:  # one line: hundreds of 0/1 values
            _write_json(target, eval_summary(job, work_dir), indent=None)
        copied.append(job.name)
    return copied


def remove_checkpoints(job: TrainJob, work_dir: Path) -> None:
    """A finished run needs only its adapter: drop its resume checkpoints (optimizer state, ~3x the adapter)."""
    for checkpoint in job.folder(work_dir).glob("checkpoint-*"):
        shutil.rmtree(checkpoint)


def set_aside_unfinished(job: TrainJob, work_dir: Path) -> None:
    """Rename a run folder that holds an adapter but neither a final result nor a checkpoint to resume from.

    `hyplora train` refuses to overwrite such a folder; renaming keeps it for inspection and lets the run restart.
    """
    folder = job.folder(work_dir)
    if (folder / "adapter_model.safetensors").exists():
        target = folder.with_name(f"{folder.name}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.rename(target)
        print(f"{folder}: an adapter without a final result or checkpoint; moved to {target.name} and restarting")


# ----------------------------------------------------------------------------- plan
def plan_table(plan: dict[str, list], selected: tuple[str, ...], work_dir: Path) -> tuple[str, float]:
    """A text table of the selected stages (jobs, states, estimated minutes) and the minutes left to run."""
    lines = [f"{'stage':<12} {'job':<48} {'state':<8} {'est. min':>8}"]
    seen, remaining = set(), 0.0
    for stage in selected:
        stage_minutes = 0.0
        for job in plan[stage]:
            if job.name in seen:
                continue
            seen.add(job.name)
            state = job.state(work_dir)
            minutes = job.estimate_s(work_dir) / 60
            if state != "done":
                stage_minutes += minutes
            lines.append(f"{stage:<12} {job.name:<48} {state:<8} {minutes:>8.1f}")
        remaining += stage_minutes
        lines.append(f"{stage:<12} {'-- left to run in this stage':<48} {'':<8} {stage_minutes:>8.1f}")
    lines.append(f"{'total':<12} {'-- left to run':<48} {'':<8} {remaining:>8.1f}  (= {remaining / 60:.1f} h)")
    return "\n".join(lines), remaining


# ----------------------------------------------------------------------------- running
class Runner:
    """Runs jobs one at a time as CLI subprocesses, logs their compute, and stops at a deadline or on SIGTERM."""

    def __init__(self, work_dir: Path, results_dir: Path, levels_dir: Path | None, deadline: float | None):
        self.work_dir, self.results_dir, self.levels_dir = work_dir, results_dir, levels_dir
        self.deadline = deadline
        self.child: subprocess.Popen | None = None
        self.stopping = False

    def stop_on_signals(self) -> None:
        """On SIGTERM / SIGINT, stop the running job (it resumes next time) and start no other."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame):
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()

    def command(self, job) -> list[str]:
        return job.command(self.work_dir) if job.kind == "train" else job.command(self.work_dir, self.levels_dir)

    def run(self, job) -> str:
        """Run one job; return `done`, `failed` or `interrupted` (deadline, signal)."""
        log_path = self.work_dir / "logs" / f"{job.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(DESIGN["threads"]),
            "MKL_NUM_THREADS": str(DESIGN["threads"]),
            "TOKENIZERS_PARALLELISM": "false",
        }
        if job.kind == "train" and job.state(self.work_dir) == "new":
            set_aside_unfinished(job, self.work_dir)
        command = self.command(job)
        started, load_start, estimate = time.time(), os.getloadavg(), job.estimate_s(self.work_dir)
        with log_path.open("a") as log:
            log.write(f"\n$ {' '.join(command)}\n")
            log.flush()
            self.child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_DIR)
            while self.child.poll() is None:
                if self.deadline is not None and time.time() > self.deadline:
                    self.stopping = True
                    self.child.terminate()
                try:
                    self.child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        code, self.child = self.child.returncode, None
        status = (
            "done"
            if code == 0 and job.state(self.work_dir) == "done"
            else "interrupted"
            if self.stopping
            else "failed"
        )
        self._log_compute(job, status, started, load_start, estimate)
        if status == "done":
            if job.kind == "train":
                remove_checkpoints(job, self.work_dir)
            sync_results([job], self.work_dir, self.results_dir)
        return status

    def _log_compute(self, job, status: str, started: float, load_start, estimate: float) -> None:
        record = {
            "job": job.name,
            "kind": job.kind,
            "stage": job.stage,
            "status": status,
            "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(time.time() - started, 1),
            "estimate_s": round(estimate, 1),
            "load_start": [round(x, 2) for x in load_start],
            "load_end": [round(x, 2) for x in os.getloadavg()],
        }
        self.results_dir.mkdir(parents=True, exist_ok=True)
        with (self.results_dir / COMPUTE_LOG).open("a") as ledger:
            ledger.write(json.dumps(record) + "\n")


def claim_next_job(selected: tuple[str, ...], work_dir: Path, results_dir: Path, skip: set[str]):
    """The first job of the selected stages that can run now and that no other runner holds, with its lock held.

    Returns `(job, lock)`, or `(None, others)` where `others` counts the runnable jobs other runners hold.
    The job list is rebuilt every time, after copying the summaries of jobs finished since (another runner's
    training may be done before that runner has copied it): a finished learning-rate grid unblocks later jobs. The lock is a
    `filelock` file per job under `work_dir/locks`: the OS releases it when its runner dies, so two runners (one
    per core) share a study and a crashed one never leaves a job claimed.
    """
    from filelock import FileLock, Timeout

    sync_results(unique_jobs(stages(results_dir), STAGES), work_dir, results_dir)
    others = 0
    for job in unique_jobs(stages(results_dir), selected):
        if job.name in skip or job.state(work_dir) not in ("new", "partial"):
            continue
        lock = FileLock(str(work_dir / "locks" / f"{job.name}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            others += 1
            continue
        if job.state(work_dir) in ("new", "partial"):  # another runner may have finished it since the check above
            return job, lock
        lock.release()
    return None, others


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stage", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run, in study order (default: all)"
    )
    parser.add_argument("--plan-only", action="store_true", help="print the compute plan and exit")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no job whose estimate ends past this many minutes; stop a job still running then"
        " (it resumes next time)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=WORK_DIR, help="adapters, checkpoints, eval JSONL (default: %(default)s)"
    )
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS_DIR, help="committed summaries (default: %(default)s)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a minutes-long run of the whole flow (2 steps, 4 items per slice) in a temporary folder",
    )
    parser.add_argument(
        "--levels-dir",
        type=Path,
        default=None,
        help="HypLLM updated_level1.json folder for accuracy by level (default: $HYPLORA_LEVELS_DIR; "
        "none: no per-level accuracy)",
    )
    args = parser.parse_args(argv)
    selected = tuple(stage for stage in STAGES if stage in args.stage)
    if args.smoke:
        use_smoke_design()
        if args.work_dir == WORK_DIR or args.results_dir == RESULTS_DIR:
            scratch = Path(tempfile.mkdtemp(prefix="cpu_study_smoke_"))
            args.work_dir, args.results_dir = scratch / "work", scratch / "results"
    levels_dir = args.levels_dir or (
        Path(os.environ["HYPLORA_LEVELS_DIR"]) if os.environ.get("HYPLORA_LEVELS_DIR") else None
    )
    if levels_dir is not None and not levels_dir.is_dir():
        raise InputError(f"--levels-dir {levels_dir}: not a folder")

    overlap_file = args.results_dir / "overlap.json"
    if read_json(overlap_file) is None or set(read_json(overlap_file)) != set(DESIGN["tasks"]):
        _write_json(overlap_file, {task: test_overlap(task) for task in DESIGN["tasks"]})
    copied = sync_results(unique_jobs(stages(args.results_dir), STAGES), args.work_dir, args.results_dir)
    if copied:
        print(f"copied {len(copied)} finished summaries to {args.results_dir}")
    table, remaining = plan_table(stages(args.results_dir), selected, args.work_dir)
    print(table)
    print(
        f"levels: {levels_dir or 'none (no per-level accuracy)'}; work dir {args.work_dir}; results {args.results_dir}"
    )
    if args.plan_only:
        return 0

    (args.work_dir / "locks").mkdir(parents=True, exist_ok=True)
    return _run_all(args, selected, levels_dir)


def _run_all(args, selected, levels_dir) -> int:
    from tqdm.auto import tqdm

    start = time.time()
    deadline = start + 60 * args.max_minutes if args.max_minutes is not None else None
    runner = Runner(args.work_dir, args.results_dir, levels_dir, deadline)
    runner.stop_on_signals()
    failed: set[str] = set()
    _, remaining = plan_table(stages(args.results_dir), selected, args.work_dir)
    bar = tqdm(total=round(remaining), unit="est. min", desc="study", dynamic_ncols=True)
    while not runner.stopping:
        job, held = claim_next_job(selected, args.work_dir, args.results_dir, failed)
        if job is None:
            if not held:
                break
            time.sleep(30)  # jobs held by another runner may unblock others (the learning-rate grid)
            continue
        estimate = job.estimate_s(args.work_dir)
        if deadline is not None and time.time() + estimate > deadline:
            held.release()
            print(f"stop: {job.name} (~{estimate / 60:.0f} min) would end past --max-minutes {args.max_minutes:g}")
            break
        resume = " (resume)" if job.kind == "train" and job.state(args.work_dir) == "partial" else ""
        tqdm.write(
            f"[{time.strftime('%H:%M:%S')}] {job.stage}: {job.kind} {job.name}{resume}, ~{estimate / 60:.0f} min,"
            f" log {args.work_dir / 'logs' / (job.name + '.log')}"
        )
        job_start = time.time()
        with held:
            status = runner.run(job)
        tqdm.write(
            f"[{time.strftime('%H:%M:%S')}] {job.name}: {status} after {(time.time() - job_start) / 60:.1f} min"
        )
        if status == "failed":
            failed.add(job.name)
        bar.update(round(estimate / 60))
    bar.close()
    left = [job.name for job in unique_jobs(stages(args.results_dir), selected) if job.state(args.work_dir) != "done"]
    print(
        f"finished after {(time.time() - start) / 60:.1f} min; {len(left)} job(s) not done"
        + (f", {len(failed)} failed: {', '.join(sorted(failed))}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as err:
        print(f"run_study: error: {err}", file=sys.stderr)
        sys.exit(2)
