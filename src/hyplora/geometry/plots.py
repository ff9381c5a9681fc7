"""Figures of the analysis report, drawn with matplotlib's Agg backend (no display needed).

Each function takes plain numbers (as computed by the other analysis modules) and writes one PNG.
"""

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import FormatStrFormatter

from hyplora.files import pyplot, save_png
from hyplora.geometry.frequency import PowerLawFit, fitted_rank_curve, rank_frequency

plt = pyplot()

_DPI = 90
_CLOUD_COLOURS = {"embeddings": "tab:blue", "gaussian": "tab:orange", "shuffled": "tab:green"}


def _panel_grid(count: int, panel_size=(3.6, 3.0)):
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size[0] * cols, panel_size[1] * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def _save(fig, path: Path) -> Path:
    return save_png(fig, path, dpi=_DPI)


def plot_rank_frequency(panels: Mapping[str, tuple[Sequence[int], PowerLawFit] | str], path: Path) -> Path:
    """Rank-frequency on log-log axes with the fitted power-law tail, one panel per dataset.

    Args:
        panels: label -> ``(token frequencies, fit)``, or label -> a note for a dataset not analysed.
        path: the PNG to write.
    """
    fig, axes = _panel_grid(len(panels))
    for ax, (label, panel) in zip(axes, panels.items(), strict=True):
        ax.set_title(label, fontsize=9)
        if isinstance(panel, str):
            ax.text(0.5, 0.5, textwrap.fill(panel, 34), ha="center", va="center", fontsize=8, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        frequencies, fit = panel
        ranked = rank_frequency(frequencies)
        ax.loglog(np.arange(1, ranked.size + 1), ranked, ".", ms=2, color="tab:blue", label="tokens")
        ranks, fitted = fitted_rank_curve(fit, ranked[0])
        ax.loglog(ranks, fitted, "-", color="tab:red", lw=1.5, label=f"power law α={fit.alpha:.2f}, xmin={fit.xmin:g}")
        ax.set_xlabel("rank")
        ax.set_ylabel("frequency")
        ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def plot_norm_vs_frequency(
    panels: Mapping[str, dict], path: Path, *, ylabel: str = "input-embedding norm", log_y: bool = False
) -> Path:
    """Norm against frequency: every token as a faint dot, binned mean ± std and median with IQR band.

    Args:
        panels: label -> ``{"frequencies", "norms", "bins", "spearman"}`` (bins from
            :func:`hyplora.geometry.norms.binned_by_frequency`, spearman a ``SpearmanResult`` dict).
        path: the PNG to write.
        ylabel: what the norm is of.
        log_y: logarithmic norm axis (hidden states have a few norms orders of magnitude above the rest).
    """
    fig, axes = _panel_grid(len(panels))
    for ax, (label, panel) in zip(axes, panels.items(), strict=True):
        ax.scatter(panel["frequencies"], panel["norms"], s=2, alpha=0.15, color="grey", rasterized=True)
        bins = panel["bins"]
        centres = np.sqrt([b["lo"] * b["hi"] for b in bins])
        ax.fill_between(
            centres, [b["q25"] for b in bins], [b["q75"] for b in bins], color="tab:blue", alpha=0.25, label="IQR"
        )
        ax.plot(centres, [b["median"] for b in bins], "-", color="tab:blue", label="median")
        ax.errorbar(
            centres,
            [b["mean"] for b in bins],
            yerr=[b["std"] for b in bins],
            fmt="o",
            ms=3,
            color="tab:red",
            capsize=2,
            label="mean ± std",
        )
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.tick_params(axis="y", which="minor", labelsize=6)
        s = panel["spearman"]
        ax.set_title(
            f"{label}\nSpearman ρ={s['rho']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}], n={s['n']}", fontsize=8
        )
        ax.set_xlabel("token frequency")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=6)
    return _save(fig, path)


def plot_groups(groups: Sequence[dict], path: Path) -> Path:
    """Mean norm (bars, ± std) and mean frequency (line, log axis) of the word groups, general to specific."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [g["group"] for g in groups]
    x = np.arange(len(names))
    ax.bar(
        x,
        [g["mean_norm"] for g in groups],
        yerr=[g["std_norm"] for g in groups],
        capsize=3,
        color="tab:blue",
        alpha=0.7,
    )
    ax.set_ylabel("mean input-embedding norm", color="tab:blue")
    ax.set_xticks(x, names, fontsize=8)
    freq_ax = ax.twinx()
    freq_ax.plot(x, [max(g["mean_frequency"], 0.1) for g in groups], "o-", color="tab:red")
    freq_ax.set_yscale("log")
    freq_ax.set_ylabel("mean frequency (pooled datasets)", color="tab:red")
    ax.set_title("Word groups from general to specific")
    return _save(fig, path)


def plot_delta(
    per_prompt: Mapping[str, dict],
    top_n: Mapping[str, dict],
    path: Path,
    *,
    reference=(0.06, 0.12),
    null: Mapping[str, dict] | None = None,
) -> Path:
    """Per-prompt relative δ (box plots) and top-N relative δ (diamonds) of embeddings and controls, per dataset.

    Args:
        per_prompt: label -> :func:`~hyplora.geometry.delta_protocols.per_prompt_delta` result.
        top_n: label -> :func:`~hyplora.geometry.delta_protocols.top_tokens_delta` result.
        path: the PNG to write.
        reference: the paper's reported range of relative δ, drawn as a band.
        null: label -> :func:`~hyplora.geometry.null.per_prompt_null` result, its mean per dimension drawn as a
            dashed line across the dataset's boxes.
    """
    labels = list(per_prompt)
    clouds = list(_CLOUD_COLOURS)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) + 2), 4.8))
    ax.axhspan(*reference, color="gold", alpha=0.3, label=f"paper, LLaMA family ({reference[0]}-{reference[1]})")
    width = 0.8 / len(clouds)
    for c, cloud in enumerate(clouds):
        positions = np.arange(len(labels)) + (c - (len(clouds) - 1) / 2) * width
        ax.boxplot(
            [per_prompt[label][cloud]["values"] for label in labels],
            positions=positions,
            widths=width * 0.9,
            showfliers=False,
            patch_artist=True,
            boxprops=dict(facecolor=_CLOUD_COLOURS[cloud], alpha=0.5),
            medianprops=dict(color="black"),
        )
        ax.plot(
            positions,
            [top_n[label][cloud]["relative_delta"] for label in labels],
            "D",
            ms=5,
            color=_CLOUD_COLOURS[cloud],
            markeredgecolor="black",
            label=f"{cloud}: per prompt (box), top-N (◆)",
        )
    for d, style in zip(next(iter(null.values())) if null else (), ("--", "-.", ":", (0, (1, 4)))):
        for i, label in enumerate(labels):
            ax.hlines(null[label][d]["mean"], i - 0.4, i + 0.4, colors="dimgray", linestyles=style, lw=1.2)
        ax.plot([], [], color="dimgray", ls=style, label=f"iid Gaussian null per prompt, d = {d}")
    ax.set_xticks(np.arange(len(labels)), [textwrap.fill(label, 16) for label in labels], fontsize=8)
    ax.set_ylabel("relative δ = 2δ / diam")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax.set_title("Gromov δ-hyperbolicity of input embeddings (base point 0)", fontsize=9)
    return _save(fig, path)
