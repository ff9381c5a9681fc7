"""Embeddings, δ protocols, word groups and `hyplora analyze` end to end, on tiny models and a word-level tokenizer."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

import hyplora.cli
from hyplora.errors import InputError
from hyplora.geometry.datasets import AnalysisDataset
from hyplora.geometry.delta_protocols import per_prompt_delta, top_tokens_delta
from hyplora.geometry.embeddings import hidden_state_norms, input_embedding_layer, token_embeddings, token_norms
from hyplora.geometry.frequency import count_tokens
from hyplora.geometry.hyperbolicity import delta_hyperbolicity
from hyplora.geometry.norms import group_statistics
from hyplora.geometry.pipeline import run_analysis

GROUP_WORDS = ["the", "of", "a", "to", "how", "much", "many", "How", "animal", "fruit", "dog", "apple", "ice", "cream"]
FILLERS = [f"w{i}" for i in range(300)]


def word_tokenizer():
    """A whitespace word-level tokenizer over GROUP_WORDS, FILLERS and digits (ids < 1000)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", *GROUP_WORDS, *FILLERS, *map(str, range(10))]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[PAD]")


def synthetic_records(count: int = 60, seed: int = 0) -> list[dict]:
    """Questions whose filler words follow a Zipf law, with the group words sprinkled in."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(count):
        fillers = [FILLERS[min(int(k), len(FILLERS)) - 1] for k in rng.zipf(1.6, size=int(rng.integers(12, 30)))]
        extra = list(rng.choice(GROUP_WORDS, size=4))
        words = fillers + extra
        rng.shuffle(words)
        records.append(
            {"instruction": " ".join(words) + " ?", "input": "", "output": "The answer is 3.", "answer": "3"}
        )
    return records


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def test_count_tokens_counts_every_occurrence(tokenizer):
    texts = ["the dog the apple", "how many dog"]
    counts = count_tokens(texts, tokenizer, batch_size=1)
    expected = Counter(tokenizer.convert_tokens_to_ids(w) for t in texts for w in t.split())
    assert counts == expected


def test_input_embeddings_are_what_the_first_layer_sees(tiny_gemma):
    ids = [3, 7, 900]
    layer = input_embedding_layer(tiny_gemma)
    expected = layer.weight[ids] * (tiny_gemma.config.hidden_size**0.5)  # Gemma scales by sqrt(d)
    assert torch.allclose(token_embeddings(tiny_gemma, ids), expected, atol=1e-6)
    assert np.allclose(token_norms(tiny_gemma, ids), expected.norm(dim=-1).detach().numpy(), atol=1e-5)
    with pytest.raises(InputError, match="out of range"):
        token_embeddings(tiny_gemma, [layer.num_embeddings])


@pytest.mark.parametrize(
    "model", [torch.nn.Linear(2, 2), type("NoEmbedding", (), {"get_input_embeddings": lambda self: None})()]
)
def test_a_model_without_input_embeddings_is_rejected(model):
    with pytest.raises(InputError, match="has no input embeddings"):
        input_embedding_layer(model)
    with pytest.raises(InputError, match="has no input embeddings"):
        run_analysis(model, None, [AnalysisDataset("x", "x", "", [{"instruction": "a b c d"}])])


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma"])
def test_hidden_state_norms_at_layer_zero_are_embedding_norms(arch, request, tokenizer):
    model = request.getfixturevalue(arch)
    texts = ["the dog of a dog", "how many apple"]
    norms = hidden_state_norms(model, tokenizer, texts, 0)
    ids = sorted(norms)
    assert ids == sorted(
        {tokenizer.convert_tokens_to_ids(w) for t in texts for w in t.split()[1:]}
    )  # not the first position
    assert np.allclose([norms[i] for i in ids], token_norms(model, ids), rtol=1e-5)
    deeper = hidden_state_norms(model, tokenizer, texts, 2)
    assert sorted(deeper) == ids and not np.allclose([deeper[i] for i in ids], token_norms(model, ids))
    with pytest.raises(InputError, match="hidden states 0..2"):
        hidden_state_norms(model, tokenizer, texts, 3)


def test_per_prompt_delta_matches_the_direct_computation(tiny_llama, tokenizer):
    texts = ["the dog of a dog how many apple", "the the of", "w1 w2 w3 w4 w5 w1"]
    result = per_prompt_delta(tiny_llama, tokenizer, texts, seed=5)
    assert result["skipped"] == 1 and result["num_points"] == [7, 5]
    first_ids = list(dict.fromkeys(tokenizer(texts[0], add_special_tokens=False)["input_ids"]))
    direct = delta_hyperbolicity(token_embeddings(tiny_llama, first_ids)).relative_delta
    assert result["embeddings"]["values"][0] == pytest.approx(direct)
    for cloud in ("embeddings", "gaussian", "shuffled"):
        values = result[cloud]["values"]
        assert len(values) == 2 and all(0 <= v <= 1 for v in values)
        assert result[cloud]["mean"] == pytest.approx(np.mean(values)) and result[cloud]["std"] == pytest.approx(
            np.std(values)
        )
    assert per_prompt_delta(tiny_llama, tokenizer, texts, seed=5) == result
    with pytest.raises(InputError, match="none of 2 prompts"):
        per_prompt_delta(tiny_llama, tokenizer, ["the of", "a a a"])


def test_top_tokens_delta_takes_the_most_frequent_tokens(tiny_llama):
    counts = Counter({10: 50, 11: 40, 12: 40, 13: 30, 14: 20, 15: 1, 16: 1})
    result = top_tokens_delta(tiny_llama, counts, top_n=5)
    direct = delta_hyperbolicity(token_embeddings(tiny_llama, [10, 11, 12, 13, 14]))
    assert result["num_points"] == 5
    assert result["embeddings"]["relative_delta"] == pytest.approx(direct.relative_delta)
    assert set(result) == {"num_points", "embeddings", "gaussian", "shuffled"}
    with pytest.raises(InputError, match="at least 4 distinct tokens"):
        top_tokens_delta(tiny_llama, Counter({1: 3, 2: 2, 3: 1}))


def test_group_statistics_policies_for_multi_token_words(tiny_llama, tokenizer):
    counts = Counter(
        {
            tokenizer.convert_tokens_to_ids(w): c
            for w, c in {"ice": 10, "cream": 2, "how": 3, "How": 5, "dog": 4}.items()
        }
    )
    norm_of = lambda ids: token_norms(tiny_llama, ids)  # noqa: E731
    groups = {"general": ["how"], "specific": ["dog", "ice cream"]}
    mean_table = group_statistics(groups, tokenizer, counts, norm_of, multi_token="mean")
    first_table = group_statistics(groups, tokenizer, counts, norm_of, multi_token="first")
    general, specific = mean_table
    assert general["words"][0]["frequency"] == 8  # " how" + " How"
    how_norms = norm_of(tokenizer.convert_tokens_to_ids(["how", "How"]))
    assert general["words"][0]["norm"] == pytest.approx(np.average(how_norms, weights=[3, 5]))
    ice_cream = specific["words"][1]
    assert ice_cream["tokens"] == [["ice", "cream"], ["[UNK]", "cream"]] and specific["multi_token_words"] == 1
    assert ice_cream["frequency"] == pytest.approx(6 + 1)  # mean(10, 2) for " ice cream", mean(0, 2) for " Ice cream"
    assert first_table[1]["words"][1]["frequency"] == pytest.approx(10 + 0)
    ice_norm = norm_of(tokenizer.convert_tokens_to_ids(["ice"]))[0]
    assert first_table[1]["words"][1]["norm"] == pytest.approx(ice_norm, rel=1e-6)
    assert specific["mean_frequency"] == pytest.approx((4 + 7) / 2)
    with pytest.raises(InputError, match="multi_token"):
        group_statistics(groups, tokenizer, counts, norm_of, multi_token="last")


def test_numbers_drop_the_bare_space_token(smollm2_tokenizer):
    from hyplora.geometry.norms import word_token_ids

    assert smollm2_tokenizer.convert_ids_to_tokens(word_token_ids(smollm2_tokenizer, "380")) == ["3", "8", "0"]
    assert smollm2_tokenizer.convert_ids_to_tokens(word_token_ids(smollm2_tokenizer, "dog")) == ["Ġdog"]


@pytest.fixture
def analyze(monkeypatch):
    """`hyplora analyze ARGS` through the real entry point, with only this verb registered."""
    monkeypatch.setattr(hyplora.cli, "VERBS", {"analyze": hyplora.cli.VERBS["analyze"]})
    return lambda argv: hyplora.cli.main(["analyze", *argv])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from hyplora.harness.base_models import tiny_model

    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_model("llama", vocab_size=400).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def test_analyze_cli_writes_the_report(analyze, model_dir, tmp_path):
    data = tmp_path / "questions.json"
    data.write_text(json.dumps(synthetic_records()))
    other = tmp_path / "more.json"
    other.write_text(json.dumps(synthetic_records(40, seed=1)))
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"general": ["the", "of", "how"], "specific": ["dog", "apple", "380"]}))
    out = tmp_path / "report"
    code = analyze(
        [
            "--model",
            str(model_dir),
            "--datasets",
            f"mine={data},{other}",
            "--output-dir",
            str(out),
            "--prompt-limit",
            "6",
            "--top-n",
            "40",
            "--hidden-layer",
            "1",
            "--groups",
            str(groups),
        ]
    )
    assert code == 0
    summary = json.loads((out / "analysis.json").read_text())
    assert list(summary["datasets"]) == ["mine", "more"]
    mine = summary["datasets"]["mine"]
    assert mine["num_records"] == 60 and mine["num_tokens"] > 1000
    assert mine["power_law"]["alpha"] > 1 and mine["power_law"]["xmin"] >= 1
    assert len(mine["delta_per_prompt"]["embeddings"]["values"]) == 6
    assert mine["delta_top_n"]["num_points"] == 40
    assert -1 <= mine["norm_vs_frequency"]["spearman"]["rho"] <= 1
    assert mine["hidden_norm_vs_frequency"]["layer"] == 1
    assert [g["group"] for g in summary["pooled"]["groups"]] == ["general", "specific"]
    assert summary["missing"] == {
        "math50k": "Math50K is not available here: pass math50k=PATH to a JSON file of its records"
    }
    report = (out / "report.md").read_text()
    for heading in ("## 1. Token frequencies", "## 2. Norm against frequency", "## 3. Word groups", "## 4. Gromov"):
        assert heading in report
    assert "Math50K is not available" in report
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "delta_hyperbolicity.png",
        "hidden_norm_vs_frequency.png",
        "hierarchy_groups.png",
        "norm_vs_frequency.png",
        "rank_frequency.png",
    ]
    assert all(0 < (out / p).stat().st_size < 300_000 and f"]({p})" in report for p in pngs)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--datasets", "math50k"], "Math50K is not available here"),
        (["--datasets", "nosuchset"], "nosuchset"),
        (["--datasets", "EMPTY"], "empty.json"),
        (["--datasets", "mine=EMPTY"], "empty.json"),
        (["--datasets", "QUESTIONS", "--top-n", "0"], "--top-n 0"),
        (["--datasets", "mawps,MAWPS"], "mawps is named twice"),
        (["--datasets", "QUESTIONS", "--groups", "GROUPS"], "cannot read word groups"),
        (["--datasets", "QUESTIONS", "--hidden-layer", "7"], "hidden states 0..2"),
    ],
)
def test_analyze_cli_bad_input_is_one_line_exit_2(analyze, model_dir, tmp_path, capsys, extra, message):
    empty, questions, broken = tmp_path / "empty.json", tmp_path / "q.json", tmp_path / "groups.json"
    empty.write_text("[]")
    questions.write_text(json.dumps(synthetic_records(8)))
    broken.write_text("{")
    paths = {"EMPTY": str(empty), "QUESTIONS": str(questions), "GROUPS": str(broken)}
    extra = [next((a.replace(k, v) for k, v in paths.items() if k in a), a) for a in extra]
    code = analyze(["--model", str(model_dir), "--output-dir", str(tmp_path / "out"), "--prompt-limit", "2", *extra])
    errors = [
        line for line in capsys.readouterr().err.splitlines() if "error" in line
    ]  # other lines: model-loading progress
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("hyplora analyze: error:") and message in errors[0]


def test_paper_datasets_stand_ins_and_user_files(tmp_path):
    from hyplora.geometry.datasets import PAPER_DATASETS, available_paper_datasets, load_analysis_dataset

    assert [spec.name for spec in PAPER_DATASETS.values()] == [
        "GSM8K",
        "AQuA",
        "BoolQ",
        "Math10K",
        "Math50K",
        "MAWPS",
        "OpenBookQA",
        "SVAMP",
        "WinoGrande",
    ]
    assert "math50k" not in available_paper_datasets() and len(available_paper_datasets()) == 8
    stand_in = load_analysis_dataset("math10k")
    assert (
        stand_in.label == "Math10K (stand-in: math mixture)" and "not available" in stand_in.note and stand_in.records
    )
    svamp = load_analysis_dataset("SVAMP")
    assert (svamp.key, svamp.label, svamp.note, len(svamp.records)) == ("svamp", "SVAMP", "", 1000)
    path = tmp_path / "math_50k.json"
    path.write_text(json.dumps(synthetic_records(5)))
    supplied = load_analysis_dataset(f"math50k={path}")
    assert (supplied.key, supplied.label, len(supplied.records)) == ("math50k", "Math50K", 5) and str(
        path
    ) in supplied.note
    with pytest.raises(InputError, match="math50k=PATH"):
        load_analysis_dataset("math50k")
