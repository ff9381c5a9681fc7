"""Write an analysis run to a folder: ``analysis.json`` (every number), the PNG figures, ``report.md``."""

import json
from pathlib import Path

from hyplora.geometry import plots
from hyplora.geometry.datasets import PAPER_DATASETS
from hyplora.geometry.null import PAPER_DIMENSIONS
from hyplora.geometry.pipeline import AnalysisResult

# The paper's reported values, from third-party notes on its second release (not verified against the paper;
# see docs/analysis/README.md).
PAPER_RELATIVE_DELTA = (0.06, 0.12)
PAPER_POWER_LAW_ALPHA = 1.9

FIGURES = {
    "rank_frequency": "rank_frequency.png",
    "norm_vs_frequency": "norm_vs_frequency.png",
    "hidden_norm_vs_frequency": "hidden_norm_vs_frequency.png",
    "groups": "hierarchy_groups.png",
    "delta": "delta_hyperbolicity.png",
}


def write_report(result: AnalysisResult, output_dir: str | Path) -> list[Path]:
    """Write the JSON, the figures and the markdown report of ``result`` into ``output_dir``.

    Returns:
        The files written.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary | {
        "paper_reference": {"relative_delta": list(PAPER_RELATIVE_DELTA), "power_law_alpha": PAPER_POWER_LAW_ALPHA}
    }
    written = [out / "analysis.json"]
    written[0].write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    written += _write_figures(result, out)
    written.append(out / "report.md")
    written[-1].write_text(render_markdown(summary, [p.name for p in written if p.suffix == ".png"]), encoding="utf-8")
    return written


def _write_figures(result: AnalysisResult, out: Path) -> list[Path]:
    datasets = result.summary["datasets"]
    labels = {key: entry["label"] for key, entry in datasets.items()}
    rank_panels = {labels[k]: (result.token_arrays[k]["frequencies"], result.power_laws[k]) for k in datasets}
    rank_panels |= {PAPER_DATASETS[k].name: note for k, note in result.summary["missing"].items()}
    figures = [
        plots.plot_rank_frequency(rank_panels, out / FIGURES["rank_frequency"]),
        plots.plot_norm_vs_frequency(
            _norm_panels(result, "norm_vs_frequency", "frequencies", "norms"), out / FIGURES["norm_vs_frequency"]
        ),
        plots.plot_groups(result.summary["pooled"]["groups"], out / FIGURES["groups"]),
        plots.plot_delta(
            {labels[k]: e["delta_per_prompt"] for k, e in datasets.items()},
            {labels[k]: e["delta_top_n"] for k, e in datasets.items()},
            out / FIGURES["delta"],
            reference=PAPER_RELATIVE_DELTA,
            null={labels[k]: e["delta_null"] for k, e in datasets.items()},
        ),
    ]
    if result.summary["settings"]["hidden_layer"] is not None:
        layer = result.summary["settings"]["hidden_layer"]
        figures.append(
            plots.plot_norm_vs_frequency(
                _norm_panels(result, "hidden_norm_vs_frequency", "hidden_frequencies", "hidden_norms"),
                out / FIGURES["hidden_norm_vs_frequency"],
                ylabel=f"hidden-state norm, layer {layer}",
                log_y=True,
            )
        )
    return figures


def _norm_panels(result: AnalysisResult, entry_key: str, freq_key: str, norm_key: str) -> dict:
    return {
        entry["label"]: {
            "frequencies": result.token_arrays[key][freq_key],
            "norms": result.token_arrays[key][norm_key],
            **entry[entry_key],
        }
        for key, entry in result.summary["datasets"].items()
    }


def render_markdown(summary: dict, figures: list[str]) -> str:
    """The markdown report of an analysis summary (as written to ``analysis.json``)."""
    s, datasets = summary["settings"], summary["datasets"]
    counted = "questions and reference answers" if s["include_answers"] else "question text (instruction + input)"
    lines = [
        f"# Token-embedding geometry: {summary['model']}",
        "",
        f"Model class `{summary['model_class']}`, vocabulary {summary['vocab_size']:,}, embedding dimension {summary['embedding_dim']}. "
        f"Token counts over the {counted} of every record; δ per prompt over the first {s['prompt_limit'] or 'all'} prompts "
        f"of each dataset (≤ {s['max_prompt_tokens']} tokens), top-N δ with N = {s['top_n']}. All numbers are in `analysis.json`.",
        "",
    ]
    notes = [f"- {e['label']}: {e['note']}" for e in datasets.values() if e["note"]]
    notes += [f"- {PAPER_DATASETS[k].name}: {note}" for k, note in summary["missing"].items()]
    if notes:
        lines += ["Datasets that differ from the paper's:", "", *notes, ""]
    lines += _power_law_section(datasets) + _norm_section(summary) + _groups_section(summary) + _delta_section(summary)
    lines += _null_section(summary)
    lines += ["## Figures", ""] + [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(lines)


def _power_law_section(datasets: dict) -> list[str]:
    lines = [
        "## 1. Token frequencies and the power law",
        "",
        f"Discrete power-law fit (`powerlaw`, xmin by the KS distance). Paper: α ≈ {PAPER_POWER_LAW_ALPHA}. "
        "R > 0 favours the power law over the alternative; p is the significance of the sign of R. "
        "'alternative did not fit': `powerlaw`'s maximum-likelihood fit of the alternative failed, so there is no "
        "comparison (a lognormal that fails runs off to μ → −∞, its power-law limit; its parameters are in `analysis.json`).",
        "",
        "| dataset | records | tokens | types | α ± σ | xmin | tail types | KS D | R, p vs lognormal | R, p vs exponential |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for e in datasets.values():
        p = e["power_law"]
        lines.append(
            f"| {e['label']} | {e['num_records']:,} | {e['num_tokens']:,} | {e['num_types']:,} | {p['alpha']:.3f} ± {p['sigma']:.3f} "
            f"| {p['xmin']:g} | {p['n_tail']:,} | {p['ks_distance']:.3f} | {_ratio(p['vs_lognormal'])} | {_ratio(p['vs_exponential'])} |"
        )
    return lines + [""]


def _norm_section(summary: dict) -> list[str]:
    datasets, pooled, settings = summary["datasets"], summary["pooled"], summary["settings"]
    hidden = settings["hidden_layer"] is not None
    lines = [
        "## 2. Norm against frequency",
        "",
        f"Spearman ρ between a token's frequency and its input-embedding norm, over every token seen; {settings['spearman_ci']}.",
        "",
        "| dataset | tokens | ρ (input embedding) | 95% CI | p |" + (" ρ (hidden state) | 95% CI |" if hidden else ""),
        "|---|---:|---:|---|---:|" + ("---:|---|" if hidden else ""),
    ]
    for e in datasets.values():
        r = e["norm_vs_frequency"]["spearman"]
        row = f"| {e['label']} | {r['n']:,} | {r['rho']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['p_value']:.2g} |"
        if "hidden_norm_vs_frequency" in e:
            h = e["hidden_norm_vs_frequency"]["spearman"]
            row += f" {h['rho']:.3f} (n={h['n']:,}) | [{h['ci_low']:.3f}, {h['ci_high']:.3f}] |"
        lines.append(row)
    r = pooled["spearman"]
    lines.append(
        f"| all datasets pooled | {r['n']:,} | {r['rho']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['p_value']:.2g} |"
    )
    if hidden:
        lines += [
            "",
            f"Hidden-state norms: after block {settings['hidden_layer']}, mean over each token's occurrences in the "
            "prompts of the δ protocol, leaving out each prompt's first position (the attention sink, whose norm is "
            "orders of magnitude larger).",
        ]
    return lines + [""]


def _groups_section(summary: dict) -> list[str]:
    lines = [
        "## 3. Word groups from general to specific",
        "",
        "Frequencies pooled over all datasets. A word counts in its ' word' and ' Word' forms; a form split into several "
        f"tokens is measured by the {summary['settings']['multi_token']} over its tokens (tokenizers that split digits make "
        "numbers multi-token).",
        "",
        "| group | words | multi-token words | mean frequency | mean norm ± std |",
        "|---|---|---:|---:|---|",
    ]
    for g in summary["pooled"]["groups"]:
        words = ", ".join(w["word"] for w in g["words"])
        lines.append(
            f"| {g['group']} | {words} | {g['multi_token_words']} | {g['mean_frequency']:,.1f} "
            f"| {g['mean_norm']:.3f} ± {g['std_norm']:.3f} |"
        )
    return lines + [""]


def _delta_section(summary: dict) -> list[str]:
    datasets = summary["datasets"]
    lo, hi = PAPER_RELATIVE_DELTA
    lines = [
        "## 4. Gromov δ-hyperbolicity",
        "",
        f"Relative δ = 2δ/diam, exact at base point 0 (HGCN protocol). Paper: {lo}-{hi} for LLaMA-family models. "
        "Per prompt: the input embeddings of the distinct tokens of one instruction, base point = its first token; "
        "top-N: the N most frequent tokens of the dataset, base point = the most frequent. "
        "Controls have the same number of points: `gaussian` = Gaussian with the cloud's mean and covariance, "
        "`shuffled` = each coordinate permuted across the points.",
        "",
        "| dataset | prompts (skipped) | points per prompt | per prompt: embeddings | gaussian | shuffled "
        "| top-N: N | embeddings | gaussian | shuffled |",
        "|---|---:|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for e in datasets.values():
        a, b = e["delta_per_prompt"], e["delta_top_n"]
        cells = [f"{a[c]['mean']:.3f} ± {a[c]['std']:.3f}" for c in ("embeddings", "gaussian", "shuffled")]
        tops = [f"{b[c]['relative_delta']:.3f}" for c in ("embeddings", "gaussian", "shuffled")]
        lines.append(
            f"| {e['label']} | {len(a['num_points'])} ({a['skipped']}) | {min(a['num_points'])}-{max(a['num_points'])} | "
            + " | ".join(cells)
            + f" | {b['num_points']} | "
            + " | ".join(tops)
            + " |"
        )
    return lines + [""] + _exact_delta_lines(datasets)


def _exact_delta_lines(datasets: dict) -> list[str]:
    """Top-N: the exact (four-point) relative δ, or its certified bracket, beside the base-point one."""
    clouds = ("embeddings", "gaussian", "shuffled")
    lines = [
        "Top-N, exact δ (the maximum over every base point, which the HGCN base-point value bounds within a factor "
        "2: δ_0 <= δ <= 2 δ_0). A bracket [lower, upper] is certified where the time budget ran out before every "
        "base point was done; `steps` = (max, min) steps done.",
        "",
        "| dataset | N | " + " | ".join(f"{c}: base point 0 | exact | steps" for c in clouds) + " |",
        "|---|---:|" + "---:|---|---:|" * len(clouds),
    ]
    for e in datasets.values():
        top = e["delta_top_n"]
        cells = []
        for cloud in clouds:
            exact = top[cloud]["exact"]
            value = (
                f"{exact['relative_delta']:.3f}"
                if exact["method"] == "exact"
                else f"[{exact['relative_delta']:.3f}, {exact['relative_delta_upper']:.3f}] "
                f"({exact['base_points_done']} of {top['num_points'] - 3} base points)"
            )
            cells.append(f"{top[cloud]['relative_delta']:.3f} | {value} | {exact['work']:.2g}")
        lines.append(f"| {e['label']} | {top['num_points']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _null_section(summary: dict) -> list[str]:
    datasets, dim, paper_dim = summary["datasets"], summary["embedding_dim"], PAPER_DIMENSIONS[-1]
    nulls = {key: e["delta_null"] for key, e in datasets.items()}
    dims = list(next(iter(nulls.values())))
    repeats = next(iter(nulls.values()))[dims[0]]["repeats"]
    lines = [
        "### Against structureless points: the δ null",
        "",
        "Relative δ at base point 0 of iid Gaussian clouds N(0, I_d), one per prompt with that prompt's number of "
        f"points: mean ± std over prompts, in brackets the range of the means of {repeats} seeded repeats. The value "
        "does not depend on the Gaussian's mean or scale; it falls with the dimension d as distances concentrate.",
        "",
        f"| dataset | embeddings (d = {dim}) | " + " | ".join(f"null, d = {d}" for d in dims) + " |",
        "|---|---|" + "---|" * len(dims),
    ]
    for key, e in datasets.items():
        own = e["delta_per_prompt"]["embeddings"]
        cells = [
            f"{n['mean']:.3f} ± {n['std']:.3f} [{min(n['repeat_means']):.3f}-{max(n['repeat_means']):.3f}]"
            for n in nulls[key].values()
        ]
        lines.append(f"| {e['label']} | {own['mean']:.3f} ± {own['std']:.3f} | " + " | ".join(cells) + " |")
    own_ratio = [datasets[k]["delta_per_prompt"]["embeddings"]["mean"] / nulls[k][str(dim)]["mean"] for k in nulls]
    at_paper = [n[str(paper_dim)]["mean"] for n in nulls.values()]
    lo, hi = PAPER_RELATIVE_DELTA
    lines += [
        "",
        f"At the model's dimension (d = {dim}) these embeddings' per-prompt δ is {_span(own_ratio, '.1f')} "
        f"times the null. At d = {paper_dim}, the dimension of the paper's LLaMA models, structureless clouds of these "
        f"sizes already give {_span(at_paper, '.3f')}, so the paper's {lo}-{hi} is "
        f"{lo / max(at_paper):.1f}-{hi / min(at_paper):.1f} times its null (concentration of distances alone gives "
        f"{min(at_paper) / hi:.0%}-{max(at_paper) / lo:.0%} of it). Relative δ values compare across models only against "
        "the null at the same dimension and point count (the point counts here come from this model's tokenizer, not LLaMA's).",
        "",
    ]
    return lines


def _span(values: list[float], fmt: str) -> str:
    """``min-max`` of ``values`` in format ``fmt``, or one value when both print the same."""
    low, high = f"{min(values):{fmt}}", f"{max(values):{fmt}}"
    return low if low == high else f"{low}-{high}"


def _ratio(test: dict) -> str:
    return "alternative did not fit" if test["status"] != "fitted" else f"{test['R']:.1f}, {test['p']:.2g}"
