"""Shared fixtures: tiny random causal LMs and the packaged SmolLM2-135M-Instruct.

- `tiny_llama`, `tiny_gemma`: fresh `tiny_model(...)` per test (2 layers, hidden 64, SmolLM2's
  49,152-token vocabulary, seed 0), in eval mode; mutate them freely.
- `smollm2_tokenizer`: the real SmolLM2 tokenizer, shared by the session: do not change it in
  place (`copy.deepcopy` it first, e.g. before setting `padding_side`).
- `smollm2`: a fresh SmolLM2-135M-Instruct model per test, loaded from the safetensors cache
  (about 0.2 s once the cache exists; the first use on a machine converts the GGUF, ~25 s,
  once across xdist workers thanks to the cache lock).

Tests that use `smollm2` or `smollm2_tokenizer` are marked `slow` automatically.
"""

import os

import pytest
import torch
from hypothesis import settings

from hyplora.harness.base_models import load_model, load_tokenizer, tiny_model

# property tests draw the same examples on every run, so CI cannot go red by chance; run with
# HYPOTHESIS_PROFILE=explore to search new examples locally
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REAL_MODEL_FIXTURES = {"smollm2", "smollm2_tokenizer"}


def pytest_collection_modifyitems(items):
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    # one thread per pytest-xdist worker: two workers x two threads oversubscribe two cores
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture
def one_thread():
    """One torch thread for the test (xdist runs two workers on two cores: two OpenMP threads each crawl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


@pytest.fixture
def tiny_gemma():
    return tiny_model("gemma")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    return load_tokenizer("smollm2-135m")


@pytest.fixture
def smollm2(smollm2_tokenizer):
    model, _ = load_model("smollm2-135m")
    return model
