"""The demo's read-outs of the committed CPU study (the parts of `make demo` that need no model)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_lines_quote_the_committed_findings(demo):
    lines = demo.study_lines()
    assert len(lines) == 2
    assert "1.3300" in lines[0] and "1.3545" in lines[0]  # LoRA and HypLoRA validation loss, docs/results.md
    assert "[−2.7, +0.7]" in lines[1]  # HypLoRA − LoRA accuracy interval


def test_resolution_lines_read_the_study_interval_and_size_this_run(demo):
    correct = {name: [i % 10 == 0 for i in range(20)] for name in demo.EVAL_SETS}
    results = {"base": {"correct": correct}, "hyplora": {"correct": correct}}
    lines = demo.resolution_lines(results, "hyplora")
    assert f"{len(demo.EVAL_SETS) * 20} items" in lines[0]
    assert "over 700 items and 3 seed(s) is ±1.7 points" in lines[1]  # half of [−2.7, +0.7]
