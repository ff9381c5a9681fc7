"""lm-evaluation-harness integration (needs the `lm-eval` extra): the `hyplora-hf` model and the hyplora tasks.

Importing this package registers `hyplora-hf` (`HypLoraLM`) in lm-eval's model registry. `TASKS_DIR`
holds lm-eval task definitions for the shipped test sets: `hyplora_<set>` for each set, the groups
`hyplora_commonsense` (multiple-choice log-likelihood) and `hyplora_math` (generation, scored with
hyplora's robust answer extraction). `run_cli` is lm-eval's own command line with both in reach;
`hyplora lm-eval ...` and `python -m hyplora.harness.lm_eval ...` call it.
"""

import logging
import sys
from pathlib import Path

from hyplora.errors import InputError
from hyplora.harness.lm_eval.model import HypLoraLM

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def _not_custom_dataset_advice(record: logging.LogRecord) -> bool:
    """False for lm-eval's advice, printed for every task with a `custom_dataset`, to pass kwargs via `--metadata`:
    the hyplora tasks take none."""
    message = record.getMessage()
    return not (message.startswith("hyplora_") and "Custom kwargs can be passed" in message)


logging.getLogger("lm_eval.api.task").addFilter(_not_custom_dataset_advice)


def lm_eval_argv(args: list[str]) -> list[str]:
    """lm-eval's arguments with `--include_path TASKS_DIR` appended (`run`, `ls`, `validate` and the legacy form
    without a subcommand, which lm-eval reads as `run`, all take it); no arguments or a leading `-h` pass unchanged.

    Raises `InputError` when `args` name an include path already: lm-eval takes only one.
    """
    if any(arg == "--include_path" or arg.startswith("--include_path=") for arg in args):
        raise InputError(
            "--include_path: lm-eval takes one include path and `hyplora lm-eval` passes the hyplora tasks "
            f"folder ({TASKS_DIR}); for your own tasks too, call lm_eval.simple_evaluate(..., task_manager="
            "TaskManager(include_path=[hyplora.harness.lm_eval.TASKS_DIR, YOUR_DIR])) after `import hyplora.harness.lm_eval`"
        )
    if not args or args[0] in ("-h", "--help"):
        return list(args)
    return [*args, "--include_path", str(TASKS_DIR)]


def run_cli(args: list[str]) -> int:
    """Run lm-eval's command line (`lm_eval.__main__.cli_evaluate`) on `lm_eval_argv(args)`; its exit status."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *lm_eval_argv(args)]
    try:
        cli_evaluate()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else int(done.code is not None)
    finally:
        sys.argv = saved
    return 0


__all__ = ["TASKS_DIR", "HypLoraLM", "lm_eval_argv", "run_cli"]
