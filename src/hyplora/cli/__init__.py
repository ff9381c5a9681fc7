"""`hyplora <verb>`: one small module per verb, each with `add_arguments(parser)` and `run(args) -> int`."""

import argparse
import contextlib
import importlib
import logging
import sys

from hyplora.errors import InputError, first_line

VERBS = {
    "train": ("hyplora.cli.train", "fine-tune a model with HypLoRA, LoRA or DoRA"),
    "eval": ("hyplora.cli.eval", "evaluate a model (and adapter) on the reasoning benchmarks"),
    "analyze": ("hyplora.cli.analyze", "token-embedding geometry: power law, norms, delta-hyperbolicity"),
    "lm-eval": ("hyplora.cli.lm_eval", "run lm-evaluation-harness with HypLoRA adapters and the hyplora tasks"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyplora", description="Hyperbolic low-rank fine-tuning of LLMs.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="{" + ",".join(VERBS) + "}")
    for name, (module_name, help_text) in VERBS.items():
        module = importlib.import_module(module_name)
        sub = verbs.add_parser(
            name,
            help=help_text,
            description=module.__doc__,
            epilog=getattr(module, "EPILOG", None),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.add_argument(
            "--threads",
            type=int,
            default=None,
            help="torch CPU threads (default: torch's choice); on a busy shared machine 1 can be several times faster",
        )
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _library_messages_on_stderr():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise InputError(f"--threads {args.threads}: must be positive")
            import torch

            torch.set_num_threads(args.threads)
        return int(args._run(args) or 0)
    except InputError as err:
        print(f"hyplora {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file fault (disk full, no permission): write_atomic names the file
        print(f"hyplora {args.verb}: error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # evaluate says how many items it kept
        print(f"hyplora {args.verb}: {first_line(err) if str(err) else 'interrupted'}", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _library_messages_on_stderr():
    """Show the library's `logging` messages of level INFO and above on (the current) stderr while a verb runs."""
    logger = logging.getLogger("hyplora")
    handler, level = logging.StreamHandler(sys.stderr), logger.level
    handler.setFormatter(logging.Formatter("hyplora: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


if __name__ == "__main__":
    sys.exit(main())
