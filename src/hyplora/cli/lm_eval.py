"""Run lm-evaluation-harness's own command line with hyplora loaded (needs `pip install 'hyplora[lm-eval]'`).

Every argument after `hyplora lm-eval` (and its own `--threads N`, if that comes first) goes to
`lm-eval` unchanged, with `--include_path` set to hyplora's task folder. The `hyplora-hf` model
takes lm-eval's `hf` model arguments; `peft=DIR` may be a HypLoRA, LoRA or DoRA adapter and
`pretrained` may also be a packaged name (`smollm2-135m`, `gemma3-270m`). Tasks: `hyplora_<set>`
for each shipped test set (boolq piqa siqa winogrande arc_e arc_c obqa: multiple-choice
log-likelihood; gsm8k svamp aqua mawps addsub multiarith singleeq: zero-shot greedy generation
scored with hyplora's robust extraction) and the groups `hyplora_commonsense`, `hyplora_math`.
"""

import argparse
from functools import partial

from hyplora.errors import InputError

EPILOG = """examples:
  hyplora lm-eval --model hyplora-hf --model_args pretrained=smollm2-135m,peft=runs/smol-hyplora \\
      --tasks hyplora_obqa --device cpu --batch_size 16
  hyplora lm-eval --model hyplora-hf --model_args pretrained=HuggingFaceTB/SmolLM2-135M-Instruct \\
      --tasks hyplora_commonsense,arc_easy --limit 50
  hyplora lm-eval ls tasks                # lm-eval's task list, the hyplora tasks included
  hyplora lm-eval run --help              # lm-eval's own options
"""


def _split_own_options(parser: argparse.ArgumentParser, args=None, namespace=None):
    """`parse_known_args` for this verb: leading `-h`/`--threads N` are hyplora's, the rest is lm-eval's verbatim.

    argparse cannot pass options it does not know through a sub-command (`--model` would be
    rejected), so the arguments are split here before argparse sees them.
    """
    args = list(args or [])
    own = []
    while args and (args[0] in ("-h", "--help", "--threads") or args[0].startswith("--threads=")):
        own.append(args.pop(0))
        if own[-1] == "--threads" and args:
            own.append(args.pop(0))
    namespace, unknown = argparse.ArgumentParser.parse_known_args(parser, own, namespace)
    namespace.lm_eval_args = args
    return namespace, unknown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = "hyplora lm-eval [--threads N] [LM_EVAL_ARGS ...]"
    parser.parse_known_args = partial(_split_own_options, parser)


def run(args: argparse.Namespace) -> int:
    try:
        from hyplora.harness.lm_eval import run_cli
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "lm_eval":
            raise InputError("lm-eval is not installed: pip install 'hyplora[lm-eval]'") from None
        raise
    return run_cli(args.lm_eval_args)
