"""`python -m hyplora`, and what a training run prints and records.

- `python -m hyplora` is the `hyplora` command;
- a short `hyplora train` on the packaged SmolLM2 prints none of the third-party messages a user cannot act on
  (`hyplora.third_party_messages`, and PEFT's Hub lookup of a base it cannot resolve), and its adapter records
  the local folder the base was loaded from, which stock tools resolve.
"""

import json
import os
import subprocess
import sys

import pytest

from hyplora.harness.base_models import model_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
UNACTIONABLE = (
    "Failed to load CPU gemm_4bit_forward",  # bitsandbytes, on import
    "`is_gradient_checkpointing` is deprecated",  # transformers, when PEFT wraps the model
    "Unable to fetch remote file",  # PEFT at save, for a base name that is neither a folder nor a Hub id
    "Could not find a config file in",  # the same lookup, offline
)


def run_hyplora(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hyplora", *argv], env=ENV, capture_output=True, text=True, timeout=timeout
    )


def test_python_m_hyplora_is_the_hyplora_command():
    done = run_hyplora("--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: hyplora ")
    assert all(verb in done.stdout for verb in ("train", "eval", "analyze"))
    bad = run_hyplora("train", "--rank", "0")
    assert bad.returncode == 2 and "--rank >= 1" in bad.stderr
    assert not [m for m in UNACTIONABLE if m in done.stderr + bad.stderr]


@pytest.mark.slow
def test_training_run_prints_no_unactionable_third_party_message_and_records_a_resolvable_base(tmp_path):
    records = [
        {"instruction": f"What is {a} plus {a + 1}?", "input": "", "output": f"The answer is {2 * a + 1}"}
        for a in range(10)
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    flags = "--max-steps 1 --limit 4 --val-size 2 --batch-size 4 --micro-batch-size 4 --cutoff-len 48 --rank 2"
    done = run_hyplora(
        "train",
        *("--model", "smollm2-135m", "--data", str(tmp_path / "data.json"), "--output-dir", str(tmp_path / "run")),
        *flags.split(),
        *("--warmup-steps", "0", "--save-steps", "1", "--threads", "1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not [m for m in UNACTIONABLE if m in done.stderr + done.stdout], done.stderr[-3000:]
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(model_folder("smollm2-135m").resolve())
    assert (model_folder("smollm2-135m") / "config.json").is_file()
