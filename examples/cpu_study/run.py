"""Run the CPU study's grid (`grid.GRID`) through the `hyplora train` / `hyplora eval` CLI, skipping what is done.

A job is done when its summary exists in `results/` (committed). Adapters, checkpoints, per-item JSONL and logs live
under `--work-dir` (ignored by git). Everything resumes: a killed training continues from its last checkpoint
(`hyplora train --resume`), a killed evaluation reuses the items it finished. Run the same command again to continue.

    python examples/cpu_study/run.py --dry-run                 # every job and its state
    python examples/cpu_study/run.py --stage lr-grid --jobs 2  # two jobs at a time, one thread each
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from grid import GRID, RESULTS_DIR, STUDY_DIR, Eval, Train, expand, read_summary

WORK_DIR = STUDY_DIR.parents[1] / "runs" / "cpu_study"
EVAL_BATCH_SIZE = 50  # a decoding step of 50 rows cost 1.3 s, of 4 rows 0.54 s (1 thread)
# one thread per job: on 2 shared cores, 2 OpenMP threads made a decoding step 18x slower (9.9 s vs 0.54 s)
THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def summary_path(job: Train | Eval, results_dir: Path) -> Path:
    return results_dir / ("runs" if isinstance(job, Train) else "evals") / f"{job.name}.json"


def folder(job: Train | Eval, work_dir: Path) -> Path:
    return work_dir / ("train" if isinstance(job, Train) else "eval") / job.name


def command(job: Train | Eval, work_dir: Path, levels_dir: Path | None = None) -> list[str]:
    """The `hyplora train` / `hyplora eval` command line of `job`."""
    from hyplora.harness.training import last_checkpoint

    if isinstance(job, Train):
        line = [sys.executable, "-m", "hyplora", "train", "--output-dir", str(folder(job, work_dir))]
        for option, value in job.flags().items():
            flag = "--" + option.replace("_", "-")
            line += ([flag] if value else ["--no-" + flag[2:]]) if isinstance(value, bool) else [flag, str(value)]
        return line + (["--resume"] if last_checkpoint(folder(job, work_dir)) else [])
    line = [sys.executable, "-m", "hyplora", "eval", "--model", job.model, "--datasets", *job.datasets]
    line += ["--limit", str(job.limit), "--mode", job.mode, "--batch-size", str(EVAL_BATCH_SIZE)]
    line += ["--output-dir", str(folder(job, work_dir))]
    if job.run is not None:
        line += ["--adapter", str(folder(job.run, work_dir))] + (["--merge"] if job.merge else [])
    return line + (["--levels-dir", str(levels_dir)] if levels_dir else [])


def train_summary(job: Train, work_dir: Path) -> dict | None:
    """`train_args.json` (options, run facts, final losses) with the loss curves of `loss_log.jsonl`; None unless
    the run finished."""
    run_dir = folder(job, work_dir)
    record = json.loads((run_dir / "train_args.json").read_text()) if (run_dir / "train_args.json").exists() else {}
    if "result" not in record or not (run_dir / "adapter_model.safetensors").exists():
        return None
    log = [json.loads(line) for line in (run_dir / "loss_log.jsonl").read_text().splitlines() if line.strip()]
    return {
        "name": job.name,
        "task": job.task,
        "method": job.method,
        "lr": job.lr,
        "seed": job.seed,
        "variant": job.variant,
        "options": job.options,
        **record,
        # the recipe's final validation pass repeats the Trainer's last one when the steps line up: one point per step
        "val_curve": sorted({entry["step"]: entry["eval_loss"] for entry in log if "eval_loss" in entry}.items()),
        "train_curve": [[entry["step"], entry["loss"]] for entry in log if "loss" in entry],
    }


def eval_summary(job: Eval, work_dir: Path) -> dict:
    """`summary.json` with each item's correctness (0/1, in item order) and difficulty level where the data has one."""
    from hyplora.harness.evaluation import read_items

    eval_dir = folder(job, work_dir)
    summary = json.loads((eval_dir / "summary.json").read_text())
    items = {}
    for label in summary["datasets"]:
        rows = sorted(read_items(eval_dir / f"{label}.jsonl"), key=lambda item: item["index"])[: job.limit]
        items[label] = {"correct": [int(row["correct"]) for row in rows]}
        if rows and all("level" in row for row in rows):
            items[label]["level"] = [row["level"] for row in rows]
    run = job.run.name if job.run else None
    return {"name": job.name, "task": job.task, "protocol": job.mode, "run": run, "summary": summary, "items": items}


def run_job(job: Train | Eval, work_dir: Path, results_dir: Path, levels_dir: Path | None) -> bool:
    """Run `job` (a training already finished in `work_dir` is only summarised) and write its summary; True if done."""
    from hyplora.files import write_atomic

    started = time.time()
    summary = train_summary(job, work_dir) if isinstance(job, Train) else None
    if summary is None:
        log = work_dir / "logs" / f"{job.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as out:
            line = command(job, work_dir, levels_dir)
            out.write(f"\n$ {' '.join(line)}\n")
            out.flush()
            code = subprocess.call(line, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **THREADS_ENV})
        if code != 0:
            return False
        summary = train_summary(job, work_dir) if isinstance(job, Train) else eval_summary(job, work_dir)
        summary["wall_s"] = round(time.time() - started, 1)  # the attempt that finished, model loading included
    if isinstance(job, Train):
        for checkpoint in folder(job, work_dir).glob("checkpoint-*"):  # a finished run needs only its adapter
            shutil.rmtree(checkpoint)
    path = summary_path(job, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(summary, indent=1 if isinstance(job, Train) else None) + "\n")
    return True


def state(job: Train | Eval, results_dir: Path) -> str:
    """`done` (its summary exists), `ready`, or `waiting` (an evaluation whose training has no summary yet)."""
    if summary_path(job, results_dir).exists():
        return "done"
    waiting = isinstance(job, Eval) and job.run is not None and read_summary("runs", job.run.name, results_dir) is None
    return "waiting" if waiting else "ready"


def run_grid(grid, work_dir: Path, results_dir: Path, *, stages=None, jobs: int = 1, levels_dir=None) -> set[str]:
    """Run every job of `grid` (of `stages`) without a summary, `jobs` at a time, until none is ready; return the
    failed ones."""
    from tqdm.auto import tqdm

    import hyplora.harness.evaluation  # noqa: F401  (eval_summary's import, done now: a package edited while a
    # study runs for hours must not be half-loaded in this process, old modules beside new ones)

    failed, running = set(), {}
    bar = tqdm(total=0, unit="job", desc="cpu study")
    with ThreadPoolExecutor(jobs) as pool:
        while True:
            ready = [
                job
                for job in expand(grid, results_dir, stages)[0]
                if state(job, results_dir) == "ready" and job.name not in failed | set(running)
            ]
            bar.total = bar.n + len(running) + len(ready)
            bar.refresh()
            for job in ready[: jobs - len(running)]:
                tqdm.write(f"[{time.strftime('%H:%M:%S')}] start {job.name} (log {work_dir / 'logs' / job.name}.log)")
                running[job.name] = pool.submit(run_job, job, work_dir, results_dir, levels_dir)
            if not running:
                break
            finished, _ = wait(running.values(), return_when=FIRST_COMPLETED)
            for name, future in list(running.items()):
                if future in finished:
                    del running[name]
                    bar.update()
                    try:
                        succeeded = future.result()
                    except Exception as error:  # e.g. an unreadable summary: report it, go on with the other jobs
                        tqdm.write(f"[{time.strftime('%H:%M:%S')}] {name}: {type(error).__name__}: {error}")
                        succeeded = False
                    if not succeeded:
                        failed.add(name)
                    tqdm.write(f"[{time.strftime('%H:%M:%S')}] {'FAILED' if name in failed else 'done'} {name}")
    bar.close()
    return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", nargs="+", default=None, help="run only these stages' lines (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="jobs at a time, one thread each (default: 1)")
    parser.add_argument("--dry-run", action="store_true", help="list every job and its state; run nothing")
    parser.add_argument(
        "--work-dir", type=Path, default=WORK_DIR, help="adapters, eval JSONL, logs (default: %(default)s)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="summaries (default: %(default)s)")
    parser.add_argument(
        "--levels-dir",
        type=Path,
        default=os.environ.get("HYPLORA_LEVELS_DIR"),
        help="HypLLM's dataset/ folder (<Name>/updated_level1.json) for per-level accuracy (default: $HYPLORA_LEVELS_DIR)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.stage or ()) - {line.stage for line in GRID}
    if unknown:
        parser.error(f"--stage {' '.join(sorted(unknown))}: no such stage (stages: {sorted({j.stage for j in GRID})})")
    if args.dry_run:
        jobs, pending = expand(GRID, args.results_dir, args.stage)
        for job in jobs:
            print(f"{job.stage:<12} {job.name:<52} {state(job, args.results_dir)}")
        for line in pending:
            print(f"{line.stage:<12} {line.name:<52} pending (its learning rate is not chosen yet)")
        return 0
    failed = run_grid(
        GRID, args.work_dir, args.results_dir, stages=args.stage, jobs=args.jobs, levels_dir=args.levels_dir
    )
    jobs, pending = expand(GRID, args.results_dir, args.stage)
    done = sum(state(job, args.results_dir) == "done" for job in jobs)
    print(f"{done} of {len(jobs)} jobs done; {len(pending)} grid lines wait for their learning rate")
    if failed:
        print(f"failed (see {args.work_dir / 'logs'}): {', '.join(sorted(failed))}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
