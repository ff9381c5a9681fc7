"""Norms of the inputs the study's adapted layers see, and what each HypLoRA input scaling makes of them.

The `scale-none` ablation (u = x) scored below the base model. This measures what it fed the exponential map:
the time coordinate is sqrt(K) cosh(|u|/sqrt(K)), and `hyplora.adapter.lorentz` clips |u| at sqrt(K) * MAX_TANGENT_NORM
(~11.09), beyond which the map no longer depends on |u|. Writes `results/input_norms.json`; `tables.py` tabulates it.

    python examples/cpu_study/input_norms.py [OUTPUT.json]   # SmolLM2-135M, the first 8 training examples, ~1 min
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid import ADAPTER, MODEL, RESULTS_DIR, SCHEDULE  # noqa: E402

from hyplora.adapter.layer import tangent_scale  # noqa: E402
from hyplora.adapter.lorentz import MAX_TANGENT_NORM, expmap0_scalars  # noqa: E402
from hyplora.harness.base_models import load_model  # noqa: E402
from hyplora.harness.data import load_train_set  # noqa: E402
from hyplora.harness.prompts import train_prompt  # noqa: E402

N_EXAMPLES = 8


def input_norms(
    model, tokenizer, texts: list[str], targets: list[str], cutoff_len: int
) -> dict[str, tuple[int, np.ndarray]]:
    """Per target module name (e.g. `q_proj`): its `in_features` and |x| of every token's input, all layers and texts."""
    norms: dict[str, list] = {name: [] for name in targets}
    in_features = {}
    hooks = []
    for module_name, module in model.named_modules():
        target = module_name.rsplit(".", 1)[-1]
        if target in norms:
            in_features[target] = module.in_features
            hooks.append(
                module.register_forward_pre_hook(
                    lambda _, args, target=target: norms[target].append(args[0].detach().norm(dim=-1).flatten())
                )
            )
    try:
        with torch.no_grad():
            for text in texts:
                model(**tokenizer(text, return_tensors="pt", truncation=True, max_length=cutoff_len))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (in_features[name], torch.cat(values).numpy()) for name, values in norms.items()}


def time_coordinate(norm: float, input_scaling: str, in_features: int) -> float:
    """The exponential map's time coordinate (K = 1) for an input of norm `norm`, the learned scale s at its initial 0."""
    norm = torch.tensor([norm], dtype=torch.float64)
    tangent_norm = tangent_scale(norm, input_scaling, torch.zeros((), dtype=torch.float64), in_features) * norm
    return float(expmap0_scalars(tangent_norm, torch.ones((), dtype=torch.float64))[0])


def main() -> int:
    torch.set_num_threads(1)
    targets = ADAPTER["target_modules"].split(",")
    records = load_train_set("math", seed=SCHEDULE["data_seed"]).records[:N_EXAMPLES]
    texts = [train_prompt(r["instruction"], r.get("input", ""), r["output"]) for r in records]
    model, tokenizer = load_model(MODEL)
    norms = input_norms(model, tokenizer, texts, targets, SCHEDULE["cutoff_len"])
    report = {"model": MODEL, "examples": N_EXAMPLES, "clip": MAX_TANGENT_NORM, "modules": {}}
    for name, (in_features, values) in norms.items():
        low, median, high = (float(np.percentile(values, p)) for p in (5, 50, 95))
        report["modules"][name] = {
            "tokens_x_layers": int(values.size),
            "in_features": in_features,
            "norm_p5_p50_p95": [low, median, high],
            "norm_max": float(values.max()),
            "time_at_median": {
                scaling: time_coordinate(median, scaling, in_features) for scaling in ("none", "unit", "rms")
            },
            "share_clipped_none": float(np.mean(values > MAX_TANGENT_NORM)),
        }
        print(
            f"{name:>10}: |x| median {median:8.2f}, 5-95% [{low:.2f}, {high:.2f}], max {values.max():.1f};"
            f" clipped with u = x: {100 * report['modules'][name]['share_clipped_none']:.1f}%;"
            f" time at the median: {report['modules'][name]['time_at_median']}"
        )
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_DIR / "input_norms.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
