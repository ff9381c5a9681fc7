"""Measure the geometry of a model's token embeddings on reasoning datasets (the paper's motivation).

For each dataset: token frequencies and their power-law fit, input-embedding norm against
frequency (Spearman with a 95% CI), and the Gromov δ-hyperbolicity of input embeddings per
prompt and of the top-N frequent tokens, each beside Gaussian and shuffled controls; then word
groups from general to specific over all datasets. Writes analysis.json, PNG figures and report.md.
"""

import argparse

EPILOG = """examples:
  hyplora analyze --model smollm2-135m --datasets gsm8k,svamp --output-dir report/
  hyplora analyze --model gemma3-270m --output-dir report/ --prompt-limit 50 --hidden-layer 9 --threads 1
  hyplora analyze --model smollm2-135m --datasets gsm8k,math50k=/data/math_50k.json --output-dir report/
  hyplora analyze --model ./my-model --datasets my_questions.json --groups groups.json --output-dir report/

datasets: the paper's nine are gsm8k aqua boolq math10k math50k mawps obqa svamp winogrande
(default: all but math50k). math10k is a stand-in (the `math` training mixture); math50k is
not available here and needs math50k=PATH. Any other test set of `hyplora eval`, or a JSON
file in its schema (optionally as NAME=PATH), also works.
groups file: {"G1 function words": ["the", "of"], "G4 specific": ["dog", "apple"]} (general first).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="packaged name (smollm2-135m, gemma3-270m), .gguf file, folder or HF id"
    )
    parser.add_argument(
        "--datasets", default=None, help="comma-separated datasets (default: the paper's nine that are available)"
    )
    parser.add_argument("--output-dir", required=True, help="folder for analysis.json, report.md and the PNGs")
    parser.add_argument(
        "--include-answers", action="store_true", help="count tokens of the reference outputs as well as the questions"
    )
    parser.add_argument(
        "--prompt-limit",
        type=int,
        default=100,
        help="prompts per dataset for the per-prompt δ; 0 = all (default: 100)",
    )
    parser.add_argument("--max-prompt-tokens", type=int, default=1500, help="tokens kept per prompt (default: 1500)")
    parser.add_argument(
        "--top-n", type=int, default=1000, help="most frequent tokens in the top-N δ cloud (default: 1000)"
    )
    parser.add_argument(
        "--exact-delta-budget",
        type=float,
        default=120.0,
        help="seconds per top-N cloud for its exact δ; past it a certified bracket is reported; 0 = no limit "
        "(default: 120)",
    )
    parser.add_argument(
        "--hidden-layer",
        type=int,
        default=None,
        help="also measure hidden-state norms after this block (0 = embeddings)",
    )
    parser.add_argument("--groups", default=None, help="JSON file of word groups (default: the paper's G1-G4)")
    parser.add_argument(
        "--multi-token", choices=("mean", "first"), default="mean", help="how a word split into tokens is measured"
    )
    parser.add_argument("--num-bins", type=int, default=12, help="frequency bins of the norm plots (default: 12)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the δ controls (default: 0)")


def run(args: argparse.Namespace) -> int:
    from hyplora.errors import InputError
    from hyplora.files import check_output_dir
    from hyplora.geometry.datasets import available_paper_datasets, load_analysis_dataset
    from hyplora.geometry.norms import load_groups
    from hyplora.geometry.pipeline import AnalysisOptions, run_analysis
    from hyplora.geometry.report import write_report
    from hyplora.harness.base_models import load_model

    for option in ("prompt_limit", "max_prompt_tokens", "top_n", "num_bins"):
        value = getattr(args, option)
        if value is not None and value < (0 if option == "prompt_limit" else 1):
            raise InputError(f"--{option.replace('_', '-')} {value}: must be positive")
    check_output_dir(args.output_dir)  # before the minutes of computation, not after
    specs = [s.strip() for s in args.datasets.split(",") if s.strip()] if args.datasets else available_paper_datasets()
    if not specs:
        raise InputError("--datasets: no dataset named")
    options = AnalysisOptions(
        include_answers=args.include_answers,
        prompt_limit=args.prompt_limit or None,
        max_prompt_tokens=args.max_prompt_tokens,
        top_n=args.top_n,
        exact_budget_s=args.exact_delta_budget or None,
        hidden_layer=args.hidden_layer,
        groups=load_groups(args.groups) if args.groups else None,
        multi_token=args.multi_token,
        num_bins=args.num_bins,
        seed=args.seed,
    )
    datasets = [load_analysis_dataset(spec) for spec in specs]
    model, tokenizer = load_model(args.model)
    result = run_analysis(model, tokenizer, datasets, options, model_name=str(args.model))
    for path in write_report(result, args.output_dir):
        print(path)
    return 0
