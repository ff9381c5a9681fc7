"""The datasets the analysis runs on: the paper's nine, stand-ins for the missing ones, or user files.

The paper measures token statistics on GSM8K, AQuA, BoolQ, Math10K, Math50K, MAWPS, OpenBookQA,
SVAMP and WinoGrande. Here Math10K is not available, and the `math` training mixture of
`hyplora.harness.data` (the training splits it is built from) stands in for it, labelled as such; Math50K
is not available at all, and is analysed only from a file the user passes as ``math50k=PATH``.
"""

from dataclasses import dataclass
from pathlib import Path

from hyplora.errors import InputError


@dataclass(frozen=True)
class PaperDataset:
    """One of the paper's datasets and where its records come from here.

    Attributes:
        name: the paper's name for it.
        source: a `hyplora.harness.data` test-set name, ``"train:<name>"`` for a training set, or None when absent.
        note: what differs from the paper's data, empty when nothing does.
        stand_in: short name of what ``source`` holds when it is not the paper's data, else empty.
    """

    name: str
    source: str | None
    note: str = ""
    stand_in: str = ""

    @property
    def label(self) -> str:
        """How ``source`` is reported: the paper's name, marked when it is a stand-in."""
        return f"{self.name} (stand-in: {self.stand_in})" if self.stand_in else self.name


PAPER_DATASETS: dict[str, PaperDataset] = {
    "gsm8k": PaperDataset("GSM8K", "gsm8k"),
    "aqua": PaperDataset("AQuA", "aqua"),
    "boolq": PaperDataset("BoolQ", "boolq"),
    "math10k": PaperDataset(
        "Math10K",
        "train:math",
        "Math10K is not available here; the `math` training mixture of hyplora.harness.data stands in for it "
        "(GSM8K train, MAWPS train, AQuA dev: the sets Math10K's questions come from, with other rationales)",
        stand_in="math mixture",
    ),
    "math50k": PaperDataset(
        "Math50K", None, "Math50K is not available here: pass math50k=PATH to a JSON file of its records"
    ),
    "mawps": PaperDataset("MAWPS", "mawps"),
    "obqa": PaperDataset("OpenBookQA", "obqa"),
    "svamp": PaperDataset("SVAMP", "svamp"),
    "winogrande": PaperDataset("WinoGrande", "winogrande"),
}


@dataclass(frozen=True)
class AnalysisDataset:
    """Records to analyse, with the name they are reported under.

    Attributes:
        key: short name (``gsm8k``, ``math10k``, or the label given with a file).
        label: name shown in tables and plots.
        note: provenance caveat, empty when none.
        records: the records (``instruction``, ``input``, ``output``, ``answer``).
    """

    key: str
    label: str
    note: str
    records: list[dict]


def available_paper_datasets() -> list[str]:
    """Keys of the paper's datasets that can be loaded without a user file."""
    return [key for key, spec in PAPER_DATASETS.items() if spec.source is not None]


def load_analysis_dataset(spec: str) -> AnalysisDataset:
    """Load one dataset named on the command line.

    Args:
        spec: a key of ``PAPER_DATASETS`` (``gsm8k``, ``math10k``...), another `hyplora.harness.data`
            test-set name, ``KEY=PATH`` (a JSON file in the test-set schema, reported as KEY;
            ``math50k=PATH`` supplies Math50K), or a path to such a file.

    Raises:
        InputError: an unknown name, an absent dataset without a file, or an empty dataset.
    """
    from hyplora.harness.data import load_test_set, load_train_set

    key, _, path = spec.partition("=")
    key = key.strip().lower()
    if path:
        paper = PAPER_DATASETS.get(key)
        dataset = AnalysisDataset(key, paper.name if paper else key, f"records from {path}", load_test_set(path))
    elif key in PAPER_DATASETS:
        paper = PAPER_DATASETS[key]
        if paper.source is None:
            raise InputError(f"--datasets {key}: {paper.note}")
        if paper.source.startswith("train:"):
            records = load_train_set(paper.source.removeprefix("train:")).records
        else:
            records = load_test_set(paper.source)
        dataset = AnalysisDataset(key, paper.label, paper.note, records)
    elif Path(spec).suffix == ".json":
        dataset = AnalysisDataset(Path(spec).stem, Path(spec).stem, f"records from {spec}", load_test_set(spec))
    else:
        dataset = AnalysisDataset(key, key, "", load_test_set(key))
    if not dataset.records:
        raise InputError(f"--datasets {spec}: the dataset is empty")
    return dataset
