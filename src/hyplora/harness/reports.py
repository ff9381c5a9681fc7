"""Reports of an evaluation summary: the markdown accuracy table and the accuracy bar chart."""

from pathlib import Path

from hyplora.files import pyplot, save_png


def markdown_table(summary: dict) -> str:
    """Per-dataset accuracy (%) and counts, then the macro mean and the test-size-weighted mean."""
    lines = [
        f"Mode `{summary['mode']}`, {summary['num_beams']} beam(s), prompt `{summary['prompt_template']}`"
        + (f", first {summary['limit']} items per set" if summary["limit"] else "")
        + ".",
        "",
        "| dataset | accuracy (%) | correct | count |",
        "|---|---:|---:|---:|",
    ]
    for label, result in summary["datasets"].items():
        lines.append(f"| {label} | {100 * result['accuracy']:.1f} | {result['correct']} | {result['count']} |")
        for level, stats in result.get("levels", {}).items():
            lines.append(
                f"| {label} level {level} | {100 * stats['accuracy']:.1f} | {stats['correct']} | {stats['count']} |"
            )
    total = sum(result["count"] for result in summary["datasets"].values())
    lines.append(f"| **macro mean** | {100 * summary['macro_mean']:.1f} | | |")
    lines.append(f"| **weighted mean** | {100 * summary['weighted_mean']:.1f} | | {total} |")
    return "\n".join(lines) + "\n"


def plot_accuracy(summary: dict, path: Path) -> None:
    """A bar chart of per-dataset accuracy with the two means as horizontal lines, saved atomically."""
    plt = pyplot()
    labels = list(summary["datasets"])
    values = [100 * summary["datasets"][label]["accuracy"] for label in labels]
    figure, axes = plt.subplots(figsize=(max(4.0, 1.0 + 0.8 * len(labels)), 3.2))
    bars = axes.bar(labels, values, color="#4c72b0")
    counts = [summary["datasets"][label]["count"] for label in labels]
    axes.bar_label(bars, labels=[f"{v:.1f}\nn={n}" for v, n in zip(values, counts)], fontsize="small")
    axes.axhline(100 * summary["macro_mean"], color="#dd8452", linestyle="--", label="macro mean")
    axes.axhline(100 * summary["weighted_mean"], color="#55a868", linestyle=":", label="weighted mean")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    adapter = f" + {Path(summary['adapter']).name}" if summary.get("adapter") else ""
    axes.set_title(f"{summary.get('model', 'model')}{adapter}: {summary['mode']} mode", fontsize="medium")
    axes.legend(loc="upper right", fontsize="small")
    save_png(figure, path, dpi=120)
