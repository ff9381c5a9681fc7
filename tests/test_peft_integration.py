"""HypLoRA through stock PEFT: injection, training, save/load, several adapters, and the refusals.

PEFT's `LoraVariant` and `_register_custom_module` are experimental: these tests are what fails when a PEFT
release changes them (the tested range is pinned in pyproject.toml).
"""

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from hyplora import HypLoraConfig, check_hyplora_layers, load_adapter
from hyplora.adapter.layer import HypLoraLinear, HypLoraLinearVariant
from hyplora.errors import InputError
from hyplora.harness.base_models import tiny_model

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
FORMS = ["seed", "llr", "llr-official", "stereographic"]


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0, self.lin1 = nn.Linear(10, 20), nn.Linear(20, 6)
        self.emb = nn.Embedding(8, 10)

    def forward(self, x):
        return self.lin1(torch.relu(self.lin0(x)))


def hyp_config(**kwargs):
    return HypLoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": TARGETS, **kwargs})


def randomize_adapters(model, seed=0):
    """Trained-looking adapters: fresh ones are an exact identity, which would hide most bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name and p.numel() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif "lora_" in name:  # a scalar (k, s): moved, but kept where its form is defined (s, k > 0)
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def input_ids(batch=2, seq=12, seed=0):
    return torch.randint(3, 1000, (batch, seq), generator=torch.Generator().manual_seed(seed))


CASES = [  # (name, model builder, config kwargs, input builder)
    ("mlp", MLP, {"target_modules": ["lin0", "lin1"]}, lambda: torch.randn(3, 10)),
    ("llama", lambda: tiny_model("llama", vocab_size=1024), {}, input_ids),
    ("gemma", lambda: tiny_model("gemma", vocab_size=1024), {"input_scaling": "unit"}, input_ids),
    (
        "llama-learned-k",
        lambda: tiny_model("llama", vocab_size=1024),
        {"learn_curvature": True, "curvature": 0.5},
        input_ids,
    ),
    ("llama-llr", lambda: tiny_model("llama", vocab_size=1024), {"form": "llr"}, input_ids),
    ("gemma-llr-official", lambda: tiny_model("gemma", vocab_size=1024), {"form": "llr-official"}, input_ids),
    (
        "mlp-stereographic",
        MLP,
        {"target_modules": ["lin0", "lin1"], "form": "stereographic"},
        lambda: torch.randn(3, 10),
    ),
]


def outputs(model, inputs):
    with torch.no_grad():
        out = model(inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


@pytest.mark.parametrize("name,build,kwargs,make_input", CASES, ids=[c[0] for c in CASES])
def test_injection_shapes_and_identity_at_init(name, build, kwargs, make_input):
    base = build()
    inputs = make_input()
    expected = outputs(base, inputs)
    model = get_peft_model(copy.deepcopy(base), hyp_config(**kwargs))
    config = model.peft_config["default"]
    time = int(config.form == "seed")  # the seed's time columns; the other forms have LoRA's shapes
    layers = [m for m in model.modules() if isinstance(m, HypLoraLinear)]
    assert layers and check_hyplora_layers(model) == len(layers)
    for layer in layers:
        assert layer.lora_A["default"].weight.shape == (4, layer.in_features + time)
        assert layer.lora_B["default"].weight.shape == (layer.out_features, 4 + time)
        assert not layer.lora_B["default"].weight.any()
    assert torch.equal(outputs(model, inputs), expected)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_curvature" in n for n in trainable) == config.learn_curvature


@pytest.mark.parametrize("name,build,kwargs,make_input", CASES, ids=[c[0] for c in CASES])
def test_save_load_round_trip_is_bit_exact(tmp_path, name, build, kwargs, make_input):
    base = build()
    model = get_peft_model(copy.deepcopy(base), hyp_config(**kwargs))
    randomize_adapters(model)
    model.eval()
    inputs = make_input()
    expected = outputs(model, inputs)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file() and not (tmp_path / "adapter_model.bin").exists()
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert any("lora_curvature" in k for k in saved) == model.peft_config["default"].learn_curvature
    saved_config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved_config["use_hyplora"] is True and saved_config["form"] == kwargs.get("form", "seed")

    reloaded = load_adapter(copy.deepcopy(base), tmp_path)
    assert torch.equal(outputs(reloaded, inputs), expected)
    via_peft = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, config=HypLoraConfig.from_pretrained(tmp_path))
    assert isinstance(via_peft.peft_config["default"], HypLoraConfig)
    assert torch.equal(outputs(via_peft, inputs), expected)


@pytest.mark.parametrize("use_dora", [False, True])
def test_plain_lora_and_dora_adapters_still_load_as_themselves(tmp_path, use_dora):
    base = tiny_model("llama", vocab_size=1024)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=TARGETS, use_dora=use_dora))
    randomize_adapters(model)
    model.eval()
    expected = outputs(model, input_ids())
    model.save_pretrained(tmp_path)
    reloaded = load_adapter(copy.deepcopy(base), tmp_path)
    assert not any(isinstance(m, HypLoraLinear) for m in reloaded.modules())
    assert type(reloaded.peft_config["default"]) is LoraConfig
    assert torch.equal(outputs(reloaded, input_ids()), expected)


def test_load_adapter_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="no adapter config"):
        load_adapter(MLP(), tmp_path / "missing")
    get_peft_model(tiny_model("llama", vocab_size=1024), hyp_config()).save_pretrained(tmp_path / "a")
    with pytest.raises(InputError, match="does not fit this base model"):
        load_adapter(tiny_model("llama", vocab_size=1024, hidden_size=32, head_dim=8), tmp_path / "a")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text("{not json")
    with pytest.raises(InputError, match="adapter_config.json: malformed JSON"):
        load_adapter(MLP(), tmp_path / "bad")


@pytest.mark.parametrize("form", FORMS)
def test_several_adapters_switch_disable_and_mix_in_one_batch(tmp_path, form):
    base = tiny_model("llama", vocab_size=1024)
    ids = input_ids(batch=3)
    base_logits = outputs(base, ids)
    model = get_peft_model(copy.deepcopy(base), hyp_config(form=form), adapter_name="hyp1")
    model.add_adapter("hyp2", hyp_config(input_scaling="none", curvature=2.0))
    model.add_adapter("plain", LoraConfig(r=4, target_modules=TARGETS))
    randomize_adapters(model)
    model.eval()
    single = {}
    for name in ("hyp1", "hyp2", "plain"):
        model.set_adapter(name)
        single[name] = outputs(model, ids)
    assert not torch.allclose(single["hyp1"], single["hyp2"])
    assert not torch.allclose(single["hyp1"], single["plain"])
    with model.disable_adapter():
        assert torch.equal(outputs(model, ids), base_logits)
    names = ["hyp2", "plain", "hyp1"]
    with torch.no_grad():
        mixed = model(ids, adapter_names=names).logits
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], single[name][row], rtol=1e-5, atol=1e-5)
    assert check_hyplora_layers(model, "hyp1") == check_hyplora_layers(model, "hyp2") == 10

    model.save_pretrained(tmp_path)  # one folder per extra adapter, each with its own config class
    fresh = load_adapter(copy.deepcopy(base), tmp_path / "hyp2", adapter_name="hyp2")
    load_adapter(fresh, tmp_path / "plain", adapter_name="plain")
    fresh.set_adapter("hyp2")
    assert torch.equal(outputs(fresh, ids), single["hyp2"])
    fresh.set_adapter("plain")
    assert torch.equal(outputs(fresh, ids), single["plain"])


TRAINED = {  # form -> config kwargs
    "seed": {"learn_curvature": True, "input_scaling": "unit"},
    "llr": {"learn_curvature": True, "input_scaling": "unit"},  # rms: |u| ~ 0.1 on this random model, slower
    "llr-official": {"curvature": 1.0},
    "stereographic": {},
}


@pytest.mark.parametrize("form", FORMS)
def test_training_lowers_the_loss_learns_curvature_and_keeps_the_base_frozen(tmp_path, form):
    base = tiny_model("llama", vocab_size=1024)
    model = get_peft_model(copy.deepcopy(base), hyp_config(form=form, **TRAINED[form]))
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = input_ids(batch=4, seq=16)
    losses = []
    for _ in range(15):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert abs(layer.curvature("default").item() - 1.0) > 1e-3  # K moved from its initial value
    model.save_pretrained(tmp_path)
    reloaded = load_adapter(copy.deepcopy(base), tmp_path, is_trainable=True)
    q = reloaded.base_model.model.model.layers[0].self_attn.q_proj
    assert q.curvature("default").item() == layer.curvature("default").item()
    assert q.lora_curvature["default"].weight.requires_grad


@pytest.mark.parametrize("form", FORMS)
def test_gradient_checkpointing_gives_the_same_gradients(form):
    grads = []
    for checkpointing in (False, True):
        model = get_peft_model(tiny_model("llama", vocab_size=1024), hyp_config(form=form))
        randomize_adapters(model)
        model.train()
        model.config.use_cache = False
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ids = input_ids()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_keeps_a_float32_branch(dtype, form):
    base = tiny_model("llama", vocab_size=1024).to(dtype)
    model = get_peft_model(base, hyp_config(form=form))
    randomize_adapters(model)
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    assert layer.lora_A["default"].weight.dtype == torch.float32
    ids = input_ids()
    out = model(ids, labels=ids)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    out.loss.backward()
    assert torch.isfinite(layer.lora_A["default"].weight.grad).all()


@pytest.mark.parametrize("form", ["seed", "llr-official"])  # ~25 s each; the two B-side paths (Gram, exact |y|)
def test_torch_compile_matches_eager(form):
    model = get_peft_model(tiny_model("llama", vocab_size=1024), hyp_config(form=form))
    randomize_adapters(model)
    model.train()
    ids = input_ids()
    eager = model(ids, labels=ids).loss
    eager.backward()
    eager_grad = model.base_model.model.model.layers[1].mlp.up_proj.lora_A["default"].weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager")
    loss = compiled(ids, labels=ids).loss
    loss.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    grad = model.base_model.model.model.layers[1].mlp.up_proj.lora_A["default"].weight.grad
    torch.testing.assert_close(grad, eager_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_merging_is_refused_without_touching_the_weights(form):
    model = get_peft_model(tiny_model("llama", vocab_size=1024), hyp_config(form=form))
    randomize_adapters(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for merge in (model.merge_and_unload, model.merge_adapter, lambda: model.merge_and_unload(safe_merge=True)):
        with pytest.raises(NotImplementedError, match="cannot be merged"):
            merge()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not any(m.merged for m in model.modules() if isinstance(m, HypLoraLinear))


@pytest.mark.parametrize("combination", ["linear", "cat", "svd"])
def test_add_weighted_adapter_is_refused(combination):
    model = get_peft_model(tiny_model("llama", vocab_size=1024), hyp_config(), adapter_name="a")
    model.add_adapter("b", hyp_config())
    with pytest.raises(NotImplementedError, match="add_weighted_adapter cannot combine HypLoRA"):
        model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "ab", combination_type=combination)
    assert "ab" not in model.peft_config


def test_add_weighted_adapter_still_works_for_plain_lora():
    model = get_peft_model(
        tiny_model("llama", vocab_size=1024), LoraConfig(r=4, target_modules=TARGETS), adapter_name="a"
    )
    model.add_adapter("b", LoraConfig(r=4, target_modules=TARGETS))
    model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "ab", combination_type="linear")
    assert "ab" in model.peft_config


@pytest.mark.parametrize("init", ["pissa", "olora", "loftq", "eva", "corda", "orthogonal"])
def test_data_driven_inits_are_refused(init):
    with pytest.raises(ValueError, match="init_lora_weights"):
        hyp_config(init_lora_weights=init)


@pytest.mark.parametrize(
    "field,value",
    [
        ("use_dora", True),
        ("lora_bias", True),
        ("curvature", 0.0),
        ("input_scaling", "layer"),
        ("target_parameters", ["w"]),
    ],
)
def test_incompatible_options_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        hyp_config(**{field: value})


class QuantLinearLike(nn.Module):
    """Stands in for a GPTQ/HQQ/AWQ layer: not an nn.Linear, so PEFT's backend would give plain LoRA."""

    def __init__(self):
        super().__init__()
        self.in_features, self.out_features = 10, 20
        self.weight = nn.Parameter(torch.randn(20, 10))

    def forward(self, x):
        return x @ self.weight.T


@pytest.mark.parametrize("target,kind", [("emb", "Embedding"), ("lin0", "QuantLinearLike")])
def test_non_linear_targets_are_refused_not_silently_plain_lora(target, kind):
    model = MLP()
    if kind == "QuantLinearLike":
        model.lin0 = QuantLinearLike()
    with pytest.raises(TypeError, match=f"nn.Linear layers only; target `{target}` is .*{kind}"):
        get_peft_model(model, hyp_config(target_modules=[target]))


def test_hyplora_after_a_plain_lora_adapter_fails_loudly():
    model = get_peft_model(MLP(), LoraConfig(r=4, target_modules=["lin0"]))
    with pytest.raises(ValueError, match="use_hyplora"):
        model.add_adapter("hyp", hyp_config(target_modules=["lin0"]))


def test_check_catches_a_layer_that_does_not_run_hyplora():
    model = get_peft_model(MLP(), hyp_config(target_modules=["lin0", "lin1"]))
    del model.base_model.model.lin1.lora_variant["default"]  # what a variant-blind backend would build
    with pytest.raises(RuntimeError, match="layer `base_model.model.lin1`"):
        check_hyplora_layers(model)


@pytest.mark.parametrize("form", FORMS)
def test_bitsandbytes_4bit_base(form):
    bnb = pytest.importorskip("bitsandbytes")
    model = MLP()
    for name in ("lin0", "lin1"):
        dense = getattr(model, name)
        quant = bnb.nn.Linear4bit(dense.in_features, dense.out_features, quant_type="nf4", compute_dtype=torch.float32)
        quant.load_state_dict(dense.state_dict())
        setattr(model, name, quant.to("cpu"))
    peft_model = get_peft_model(model, hyp_config(target_modules=["lin0", "lin1"], form=form))
    assert check_hyplora_layers(peft_model) == 2
    x = torch.randn(4, 10)
    with torch.no_grad():
        base = peft_model(x)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        peft_model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        assert not torch.allclose(peft_model(x), base)
    with pytest.raises(NotImplementedError):
        peft_model.merge_and_unload()


def test_variant_registry_of_the_pinned_peft_still_dispatches_to_hyplora():
    layer = get_peft_model(MLP(), hyp_config(target_modules=["lin0"])).base_model.model.lin0
    assert type(layer) is HypLoraLinear
    assert isinstance(layer.lora_variant["default"], HypLoraLinearVariant)
    assert not layer.supports_lora_conversion("default")


def test_real_smollm2_trains_and_round_trips(smollm2, smollm2_tokenizer, tmp_path):
    """The packaged SmolLM2-135M-Instruct: attach HypLoRA, a few steps lower the loss, save/load is exact."""
    base_state = {k: v.clone() for k, v in smollm2.state_dict().items()}
    model = get_peft_model(smollm2, hyp_config(r=8, lora_alpha=16, input_scaling="unit"))
    assert check_hyplora_layers(model) == 5 * smollm2.config.num_hidden_layers
    text = [
        "Question: Natalia sold 48 clips in April and half as many in May. How many in total? "
        "Answer: 48 / 2 = 24 in May, 48 + 24 = 72. The answer is 72."
    ] * 2
    batch = smollm2_tokenizer(text, return_tensors="pt")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(4):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    model.eval()
    expected = outputs(model, batch["input_ids"][:1])
    model.save_pretrained(tmp_path)
    base = model.unload()  # the frozen base, adapters removed
    assert all(torch.equal(v, base_state[k]) for k, v in base.state_dict().items())
    reloaded = load_adapter(base, tmp_path)
    assert torch.equal(outputs(reloaded, batch["input_ids"][:1]), expected)


@pytest.mark.parametrize("form", FORMS)
def test_float64_base_computes_the_branch_in_float64(form):
    model = get_peft_model(tiny_model("llama", vocab_size=1024).double(), hyp_config(form=form))
    randomize_adapters(model)
    ids = input_ids()
    out = model(ids, labels=ids)
    assert out.logits.dtype == torch.float64 and torch.isfinite(out.logits).all()
    out.loss.backward()
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    assert layer.lora_A["default"].weight.grad.dtype == torch.float64
