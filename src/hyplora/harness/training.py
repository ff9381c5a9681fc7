"""Fine-tuning recipe: HypLoRA, LoRA or DoRA on an Alpaca-schema instruction set, on transformers' Trainer.

The defaults are the HypLoRA paper's recipe (LLM-Adapters' `finetune.py` as the v2 scripts call
it): r=32, alpha=64, batch 16 from micro-batches of 4, 3 epochs, lr 3e-4 (linear decay, 100
warm-up steps), cutoff 256 tokens, dropout 0.05, targets q,k,v,up,down, AdamW, 120 held-out
validation examples. One deliberate change: every method gets the same `alpha` unless the caller
sets another (the reference scripts gave HypLoRA and LoRA different alphas, a confound).

The recipe is a few small parts, in the torchtune manner::

    recipe = FineTuneRecipe(args)   # checks every option first, fails fast with InputError
    recipe.setup()                  # model + adapter, tokenized data, Trainer
    result = recipe.train()         # with `resume=True`: from the last complete checkpoint
    recipe.save(result)             # adapter (safetensors), train_args.json, loss_log.jsonl, loss.png

`train(args)` runs the four. The same code runs on one process and under `torchrun` or
`accelerate launch` (DDP; FSDP2 through accelerate's config): Trainer reads the launcher's
environment, and the global batch stays `batch_size` = micro-batch x processes x accumulation.

Output folder (`output_dir`)::

    adapter_config.json, adapter_model.safetensors   the adapter (`hyplora.load_adapter` reads it)
    train_args.json                                  options, derived run facts, final losses
    loss_log.jsonl, loss.png                         Trainer's log history, one record per line
    checkpoint-<step>/                               periodic Trainer checkpoints (resume)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hyplora.adapter.config import FORM_DEFAULTS
from hyplora.errors import InputError, first_line
from hyplora.files import check_output_dir, pyplot, save_png, write_atomic
from hyplora.harness.data import DOMAINS
from hyplora.harness.prompts import TEMPLATES

METHODS = ("hyplora", "lora", "dora")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")
INPUT_SCALINGS = tuple(dict.fromkeys(scaling for scalings, _, _ in FORM_DEFAULTS.values() for scaling in scalings))
CHECKPOINT_PREFIX = "checkpoint-"
ARGS_FILE, LOSS_LOG_FILE, LOSS_PLOT_FILE = "train_args.json", "loss_log.jsonl", "loss.png"
# the option groups of `hyplora train --help`
_MODEL, _DATA, _OPTIMISATION, _OUTPUT = "model and adapter", "data", "optimisation", "output and checkpoints"
logger = logging.getLogger(__name__)
# Options a resumed run may change (hardware, bookkeeping, length); all others define the adapter,
# the data or its order, and must match the checkpoint's.
_RESUME_MAY_CHANGE = (
    "micro_batch_size",
    "precision",
    "gradient_checkpointing",
    "logging_steps",
    "save_steps",
    "eval_steps",
    "save_total_limit",
    "epochs",
    "max_steps",
)


@dataclass
class TrainArgs:
    """Options of one fine-tuning run; the defaults are the paper's recipe.

    `form`, `curvature`, `learn_curvature` and `input_scaling` apply to `method="hyplora"` only; `None`
    means `HypLoraConfig`'s default. `max_steps > 0` overrides `epochs`. `limit` caps the number
    of training examples (taken after the validation carve-out). `batch_size` is the global batch:
    `micro_batch_size x processes x gradient-accumulation steps`. `fsdp` shards the model over the launcher's
    processes with FSDP2 (`hyplora.harness.distributed`). `hyplora train`'s options are generated from these
    fields' `metadata` (help, choices, group; see `hyplora.cli.options`).
    """

    model: str = field(
        default="smollm2-135m",
        metadata={"help": "HF id, local folder, .gguf, or smollm2-135m / gemma3-270m", "group": _MODEL},
    )
    data: str = field(
        default="math",
        metadata={
            "help": "training set name (math, commonsense, gsm8k-train, ...) or a JSON/JSONL file",
            "group": _DATA,
        },
    )
    method: str = field(default="hyplora", metadata={"help": "adapter", "choices": METHODS, "group": _MODEL})
    output_dir: str = field(
        default="runs/hyplora", metadata={"help": "adapter, logs and checkpoints", "group": _OUTPUT}
    )
    rank: int = field(default=32, metadata={"help": "adapter rank r", "group": _MODEL})
    alpha: float = field(
        default=64.0,
        metadata={"help": "scaling alpha, output x alpha/r; the same for every method", "group": _MODEL},
    )
    dropout: float = field(default=0.05, metadata={"help": "adapter input dropout", "group": _MODEL})
    target_modules: tuple[str, ...] = field(
        default=DEFAULT_TARGET_MODULES,
        metadata={
            "help": "comma-separated linear layer names, or one regular expression over full module names",
            "group": _MODEL,
        },
    )
    form: str | None = field(
        default=None,
        metadata={
            "help": (
                "hyplora: adapter form; seed = first release, llr = NeurIPS 2025 LLR (consistent K), llr-official = "
                "that release's code as computed (reproduces its tables), stereographic = its hyplora_simplified "
                "(default: HypLoraConfig's, seed)"
            ),
            "choices": tuple(FORM_DEFAULTS),
            "group": _MODEL,
        },
    )
    curvature: float | None = field(
        default=None,
        metadata={"help": "hyplora: initial curvature K (default: HypLoraConfig's)", "group": _MODEL},
    )
    learn_curvature: bool | None = field(default=None, metadata={"help": "hyplora: train K", "group": _MODEL})
    input_scaling: str | None = field(
        default=None,
        metadata={
            "help": "hyplora: input scaling before the exponential map (default: HypLoraConfig's)",
            "choices": INPUT_SCALINGS,
            "group": _MODEL,
        },
    )
    epochs: float = field(
        default=3.0, metadata={"help": "training epochs", "group": _OPTIMISATION, "exclusive": "length"}
    )
    max_steps: int = field(
        default=0,
        metadata={
            "help": "optimizer steps; overrides --epochs when > 0",
            "group": _OPTIMISATION,
            "exclusive": "length",
        },
    )
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate, linear decay", "group": _OPTIMISATION})
    batch_size: int = field(default=16, metadata={"help": "global batch", "group": _OPTIMISATION})
    micro_batch_size: int = field(default=4, metadata={"help": "per-process micro-batch", "group": _OPTIMISATION})
    cutoff_len: int = field(default=256, metadata={"help": "maximum tokens per example", "group": _DATA})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps", "group": _OPTIMISATION})
    val_size: int = field(
        default=120, metadata={"help": "held-out validation examples carved from the data", "group": _DATA}
    )
    seed: int = field(
        default=42,
        metadata={
            "help": "seed for adapter init, dropout, and (without --data-seed) the data",
            "group": _OPTIMISATION,
        },
    )
    data_seed: int | None = field(
        default=None,
        metadata={
            "help": "seed for the mixture shuffle, the validation carve-out and the batch order, so that runs of different --seed see the same data (default: --seed)",
            "group": _OPTIMISATION,
        },
    )
    limit: int | None = field(
        default=None,
        metadata={"help": "use at most this many training examples (after the validation carve-out)", "group": _DATA},
    )
    train_on_inputs: bool = field(
        default=True, metadata={"help": "loss on the prompt too (LLM-Adapters' default: on)", "group": _DATA}
    )
    domain: str | None = field(
        default=None,
        metadata={
            "help": "domain of a --data file (math or commonsense); default: from its gold answers, which must "
            "all be numbers or letters A-E (math) or none be (commonsense)",
            "choices": DOMAINS,
            "group": _DATA,
        },
    )
    template: str = field(default="alpaca", metadata={"help": "prompt template", "choices": TEMPLATES, "group": _DATA})
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto = bf16 on a bf16 CUDA GPU, fp16 on an older one, fp32 on the CPU; bf16 on the CPU is autocast, fp16 needs a GPU",
            "choices": PRECISIONS,
            "group": _MODEL,
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "trade compute for activation memory (non-reentrant)", "group": _MODEL},
    )
    fsdp: bool = field(
        default=False,
        metadata={
            "help": "shard the model with FSDP2 over the launcher's processes (torchrun; CPU or GPU)",
            "group": _MODEL,
        },
    )
    logging_steps: int = field(default=10, metadata={"help": "log the loss every N steps", "group": _OUTPUT})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N steps", "group": _OUTPUT})
    eval_steps: int | None = field(
        default=None,
        metadata={"help": "validation loss every N steps (default: --save-steps)", "group": _OUTPUT},
    )
    save_total_limit: int | None = field(
        default=3, metadata={"help": "keep the newest N checkpoints", "group": _OUTPUT}
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue from the last complete checkpoint in --output-dir",
            "group": _OUTPUT,
        },
    )

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(name.strip() for name in self.target_modules.split(",") if name.strip())
        self.target_modules = tuple(self.target_modules)

    @property
    def hyplora_options(self) -> dict:
        """The HypLoraConfig fields the caller set (the others keep HypLoraConfig's defaults)."""
        options = {
            "form": self.form,
            "curvature": self.curvature,
            "learn_curvature": self.learn_curvature,
            "input_scaling": self.input_scaling,
        }
        return {key: value for key, value in options.items() if value is not None}

    @property
    def peft_target_modules(self) -> list[str] | str:
        """Module names (PEFT matches them as name suffixes), or one regular expression over full module
        names when `target_modules` is a single pattern (e.g. to keep Gemma 3's vision tower frozen)."""
        if len(self.target_modules) == 1 and set(self.target_modules[0]) & set("*?[]()|^$\\"):
            return self.target_modules[0]
        return list(self.target_modules)

    @property
    def data_order_seed(self) -> int:
        """The seed of the mixture shuffle, validation carve-out and batch order: `data_seed`, else `seed`."""
        return self.seed if self.data_seed is None else self.data_seed

    def to_json(self) -> dict:
        """The options as plain JSON values (what `train_args.json` stores under `"args"`)."""
        values = dataclasses.asdict(self)
        values["target_modules"] = list(self.target_modules)
        return values


def world_size() -> int:
    """Number of training processes the launcher (torchrun / accelerate) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _device_type() -> str:
    """The device Trainer trains on: "cuda", "mps", else "cpu"."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The highest-step complete `checkpoint-<step>` folder in `output_dir`, or None.

    Trainer writes `trainer_state.json` last, so a folder without it was cut off mid-write (a
    killed job) and is skipped; so is one with a damaged file (`checkpoint_damage`), with a warning
    naming the file and the checkpoint used instead.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    numbered = [path for path in folder.glob(f"{CHECKPOINT_PREFIX}*") if path.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    numbered.sort(key=lambda path: int(path.name[len(CHECKPOINT_PREFIX) :]), reverse=True)
    skipped = []
    for path in numbered:
        if not (path / "trainer_state.json").is_file():
            continue
        damage = checkpoint_damage(path)
        if damage is None:
            if skipped:
                logger.warning(f"--resume: skipping {'; '.join(skipped)}; resuming from {path.name}")
            return path
        skipped.append(f"{path.name} ({damage})")
    if skipped:
        logger.warning(f"--resume: every checkpoint is damaged: {'; '.join(skipped)}")
    return None


def checkpoint_damage(path: Path) -> str | None:
    """What makes checkpoint folder `path` unusable, or None: `trainer_state.json` that is not a JSON object, a
    `.pt`/`.pth` file that is not a whole zip archive (torch.save's format; a truncated one loses its end
    record), or a `.safetensors` file whose header does not cover its data."""
    import zipfile

    from safetensors import SafetensorError, safe_open

    try:
        if not isinstance(json.loads((path / "trainer_state.json").read_text()), dict):
            return "trainer_state.json is not a JSON object"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is truncated or not JSON"
    for file in sorted(path.iterdir()):
        if file.suffix in (".pt", ".pth") and not zipfile.is_zipfile(file):
            return f"{file.name} is truncated or not a torch.save file"
        if file.suffix == ".safetensors":
            try:
                with safe_open(file, framework="pt") as tensors:
                    for key in tensors.keys():
                        tensors.get_slice(key)
            except (SafetensorError, OSError) as err:
                return f"{file.name}: {first_line(err)}"
    return None


def adapter_config(args: TrainArgs):
    """The PEFT config for `args.method`: `HypLoraConfig` for hyplora, `LoraConfig` (use_dora for dora)."""
    from peft import LoraConfig

    common = dict(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        target_modules=args.peft_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        if args.method == "hyplora":
            from hyplora import HypLoraConfig

            return HypLoraConfig(**common, **args.hyplora_options)
        return LoraConfig(**common, use_dora=args.method == "dora")
    except ValueError as err:  # PEFT and HypLoraConfig name the bad field
        raise InputError(f"adapter options: {first_line(err)}") from err


def plot_loss(log_history: list[dict], path: str | os.PathLike) -> None:
    """Training loss (per logging step) and validation loss against the optimizer step, as a PNG."""
    plt = pyplot()
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    val = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    fig, ax = plt.subplots(figsize=(6, 4))
    for points, label, style in ((train, "train", "-"), (val, "validation", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, path, dpi=120)


def _write_json(path: Path, value) -> None:
    write_atomic(path, json.dumps(value, indent=2) + "\n")


def _finite_training_callback():
    """A TrainerCallback that stops a run whose logged loss or gradient norm, or whose trainable weights after an
    optimizer step, are not finite: `TrainingDiverged` names the step, before that step's checkpoint is written."""
    from transformers import TrainerCallback

    class FiniteTraining(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for name in ("loss", "grad_norm", "eval_loss"):
                value = (logs or {}).get(name)
                if value is not None and not math.isfinite(value):
                    raise TrainingDiverged(f"{name} is {value} at step {state.global_step}")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            import torch

            for name, param in model.named_parameters():
                if param.requires_grad and not torch.isfinite(param.detach()).all():
                    raise TrainingDiverged(f"weight {name} is not finite after step {state.global_step}")

    return FiniteTraining()


class TrainingDiverged(InputError):
    """The loss, a gradient or a trained weight became NaN or infinite (too high a learning rate, alpha or K)."""

    def __init__(self, what: str):
        super().__init__(
            f"training diverged: {what}; no adapter saved (lower --lr, --alpha or --curvature; checkpoints from"
            " earlier steps are kept)"
        )


def _loss_log_callback(path: Path):
    """A TrainerCallback mirroring `state.log_history` into a JSONL file on the main process.

    It rewrites the file at train begin (after a resume that is exactly the checkpoint's history,
    dropping records a killed run wrote past its last checkpoint) and appends one line per log.
    """
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_atomic(path, "".join(json.dumps(entry) + "\n" for entry in state.log_history))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                with path.open("a") as log_file:
                    log_file.write(json.dumps(state.log_history[-1]) + "\n")

    return LossLog()


class FineTuneRecipe:
    """Fine-tune one model with one adapter method; see the module docstring for the parts.

    Raises:
        InputError: an unknown method, template or precision; hyplora-only options with another
            method; a batch size that does not split into micro-batches x processes; a non-empty
            output folder without `resume`, or `resume` with no complete checkpoint to resume;
            a resumed run whose options differ from the checkpoint's beyond `_RESUME_MAY_CHANGE`.
    """

    def __init__(self, args: TrainArgs):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.world_size = world_size()
        self._check_options()
        self.checkpoint = self._find_checkpoint()
        self.model = self.tokenizer = self.trainer = None
        self.train_dataset = self.val_dataset = self.train_set = None
        self.data_report: dict = {}
        self.run_record: dict | None = None  # train_args.json's "args" and "run", set by train()

    # -- fail fast ---------------------------------------------------------------------------------
    def _check_options(self) -> None:
        a = self.args
        if a.method not in METHODS:
            raise InputError(f"--method {a.method!r} is unknown: choose one of {', '.join(METHODS)}")
        if a.method != "hyplora" and a.hyplora_options:
            names = ", ".join("--" + name.replace("_", "-") for name in a.hyplora_options)
            raise InputError(f"{names}: only for --method hyplora, not {a.method}")
        if a.precision not in PRECISIONS:
            raise InputError(f"--precision {a.precision!r} is unknown: choose one of {', '.join(PRECISIONS)}")
        self._check_precision_and_launch()
        for name in ("alpha", "dropout", "lr", "epochs", "curvature"):  # nan and inf pass every comparison below
            value = getattr(a, name)
            if value is not None and not math.isfinite(value):
                raise InputError(f"--{name} {value}: must be a finite number")
        if a.rank < 1 or a.alpha <= 0 or not 0 <= a.dropout < 1:
            raise InputError(
                f"need --rank >= 1, --alpha > 0 and 0 <= --dropout < 1 (got {a.rank}, {a.alpha}, {a.dropout})"
            )
        if a.lr <= 0:
            raise InputError(f"--lr {a.lr}: must be > 0")
        steps = {"warmup_steps": (a.warmup_steps, 0), "logging_steps": (a.logging_steps, 1)}
        steps |= {"save_steps": (a.save_steps, 1), "eval_steps": (a.eval_steps, 1), "cutoff_len": (a.cutoff_len, 1)}
        steps |= {"save_total_limit": (a.save_total_limit, 1)}
        for name, (value, least) in steps.items():
            if value is not None and value < least:
                raise InputError(f"--{name.replace('_', '-')} {value}: must be >= {least}")
        if a.domain is not None and a.domain not in DOMAINS:
            raise InputError(f"--domain {a.domain!r} is unknown: choose one of {', '.join(DOMAINS)}")
        adapter_config(a)  # curvature, form, input scaling: HypLoraConfig's checks, before any model loads
        check_output_dir(a.output_dir)
        if not a.target_modules:
            raise InputError("--target-modules is empty: name at least one linear layer, e.g. q_proj,v_proj")
        if a.max_steps <= 0 and a.epochs <= 0:
            raise InputError("set --epochs > 0 or --max-steps > 0")
        if a.val_size < 0 or (a.limit is not None and a.limit < 1):
            raise InputError(f"--val-size must be >= 0 and --limit >= 1 (got {a.val_size}, {a.limit})")
        per_step = a.micro_batch_size * self.world_size
        if a.micro_batch_size < 1 or a.batch_size < per_step or a.batch_size % per_step:
            raise InputError(
                f"--batch-size {a.batch_size} must be a multiple of --micro-batch-size {a.micro_batch_size}"
                f" x {self.world_size} process(es)"
            )

    def _check_precision_and_launch(self) -> None:
        import torch

        from hyplora.harness.distributed import check_launch

        if self.args.precision == "fp16" and _device_type() == "cpu":
            raise InputError(
                "--precision fp16 needs a GPU: accelerate has no fp16 autocast on the CPU and would train in fp32;"
                " use --precision bf16 (autocast) or fp32"
            )
        check_launch(
            fsdp=self.args.fsdp,
            precision=self._precision(),
            world_size=self.world_size,
            resume=self.args.resume,
            cuda=torch.cuda.is_available(),
        )

    def _find_checkpoint(self) -> Path | None:
        checkpoint = last_checkpoint(self.output_dir)
        if self.args.resume:
            if checkpoint is None:
                raise InputError(f"--resume: no complete checkpoint-<step> folder in {self.output_dir}")
            self._check_resume_args()
            self._check_not_finished(checkpoint)
            return checkpoint
        if checkpoint is not None or (self.output_dir / "adapter_model.safetensors").exists():
            raise InputError(
                f"{self.output_dir} already holds a run: pass --resume to continue it, or another --output-dir"
            )
        return None

    def _check_resume_args(self) -> None:
        saved_path = self.output_dir / ARGS_FILE
        if not saved_path.is_file():
            return
        saved = json.loads(saved_path.read_text())["args"]
        current = self.args.to_json()
        for name, value in current.items():
            if name in ("resume", "output_dir") or saved.get(name, value) == value:
                continue
            flag = "--" + name.replace("_", "-")
            if name not in _RESUME_MAY_CHANGE:
                raise InputError(f"--resume: {flag} is {value!r} but the checkpoint's run used {saved[name]!r}")
            warnings.warn(
                f"--resume: {flag} changed from {saved[name]!r} to {value!r}; the new value is used", stacklevel=2
            )

    def _check_not_finished(self, checkpoint: Path) -> None:
        """Refuse to resume a finished run with the same length options: Trainer would take no step and report a
        training loss of 0.0 over the run's record."""
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        saved_path = self.output_dir / ARGS_FILE
        if not saved_path.is_file() or "result" not in (record := json.loads(saved_path.read_text())):
            return
        same_length = all(record["args"].get(name) == getattr(self.args, name) for name in ("epochs", "max_steps"))
        if same_length and state.get("global_step", 0) >= state.get("max_steps", math.inf):
            raise InputError(
                f"--resume: the run in {self.output_dir} finished at step {state['global_step']} ({ARGS_FILE} has"
                " its result); raise --max-steps or --epochs to train further"
            )

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.args.batch_size // (self.args.micro_batch_size * self.world_size)

    # -- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        from transformers import set_seed

        from hyplora.harness.data import load_train_set

        set_seed(self.args.seed)  # the adapter's initial weights
        a = self.args  # read the data first: a bad data file costs seconds, not a model load
        self.train_set = load_train_set(a.data, seed=a.data_order_seed, domain=a.domain)
        self._setup_model()
        self._setup_data()
        self._setup_trainer()

    def _precision(self) -> str:
        import torch

        if self.args.precision != "auto":
            return self.args.precision
        if torch.cuda.is_available():
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"

    def _setup_model(self) -> None:
        import torch
        from peft import get_peft_model

        from hyplora.harness.base_models import load_model
        from hyplora.harness.distributed import distributed_config

        precision, sharding = self._precision(), None
        if self.args.fsdp:  # float32 weights: FSDP's bf16 MixedPrecisionPolicy casts them for compute
            precision, sharding = "fp32", distributed_config(world_size=self.world_size, precision=precision)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        model, self.tokenizer = load_model(self.args.model, dtype=dtype, distributed_config=sharding)
        model.config.use_cache = False
        if self.args.gradient_checkpointing:
            # reentrant checkpointing under DDP fails with "marked ready twice" (huggingface/peft#313)
            # named gradient_checkpointing_enable before transformers 5.x renamed it (the old name warns)
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable({"use_reentrant": False})
        targets = self.args.peft_target_modules
        layer_names = {name.split(".")[-1] for name, _ in model.named_modules()}
        missing = [name for name in targets if name not in layer_names] if isinstance(targets, list) else []
        if missing:
            raise InputError(f"--target-modules {','.join(missing)}: no such layer in {self.args.model}")
        if self.args.method == "hyplora":
            not_linear = sorted(
                {
                    f"{name.split('.')[-1]} ({type(module).__name__})"
                    for name, module in model.named_modules()
                    if isinstance(targets, list)
                    and name.split(".")[-1] in targets
                    and not isinstance(module, torch.nn.Linear)
                }
            )
            if not_linear:
                raise InputError(f"--target-modules {', '.join(not_linear)}: HypLoRA adapts nn.Linear layers only")
        try:
            self.model = get_peft_model(model, adapter_config(self.args))
        except ValueError as err:  # e.g. a --target-modules pattern that matches no layer
            raise InputError(f"--target-modules / adapter options: {first_line(err)}") from err
        if self.args.method == "hyplora":
            from hyplora import check_hyplora_layers

            check_hyplora_layers(self.model)

    def _setup_data(self) -> None:
        from tqdm.auto import tqdm

        from hyplora.harness.data import split_validation
        from hyplora.harness.prompts import tokenize_example

        a, train_set = self.args, self.train_set
        if is_main_process():
            logger.info(train_set.summary())
        train_records, val_records = split_validation(train_set.records, a.val_size, seed=a.data_order_seed)
        if a.limit is not None:
            train_records = train_records[: a.limit]
        if not train_records:
            raise InputError(f"--data {a.data}: no training examples left after the validation carve-out")

        def tokenize(records, desc):
            return [
                tokenize_example(self.tokenizer, record, a.cutoff_len, a.train_on_inputs, a.template)
                for record in tqdm(records, desc=desc, disable=not is_main_process() or len(records) < 1000)
            ]

        self.train_dataset = tokenize(train_records, "tokenize train")
        self.val_dataset = tokenize(val_records, "tokenize validation")
        truncated = sum(len(example["input_ids"]) >= a.cutoff_len for example in self.train_dataset)
        self.data_report = {
            "train_examples": len(self.train_dataset),
            "val_examples": len(self.val_dataset),
            "dropped_test_overlap": train_set.dropped,
            "truncated_at_cutoff": truncated,
            "train_tokens": sum(len(example["input_ids"]) for example in self.train_dataset),
        }

    def _training_arguments(self):
        import torch
        from transformers import TrainingArguments

        a, precision = self.args, self._precision()
        has_val = bool(self.val_dataset)
        return TrainingArguments(
            output_dir=str(self.output_dir),
            per_device_train_batch_size=a.micro_batch_size,
            per_device_eval_batch_size=a.micro_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            num_train_epochs=a.epochs,
            max_steps=a.max_steps if a.max_steps > 0 else -1,
            learning_rate=a.lr,
            lr_scheduler_type="linear",
            warmup_steps=a.warmup_steps,
            optim="adamw_torch",
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            ddp_find_unused_parameters=False,
            logging_steps=a.logging_steps,
            logging_nan_inf_filter=False,  # Trainer's filter logs a NaN loss as the mean so far (0.0 at first)
            save_strategy="steps",
            save_steps=a.save_steps,
            save_total_limit=a.save_total_limit,
            save_only_model=a.fsdp,  # Trainer cannot checkpoint the optimizer of a model sharded at load time
            eval_strategy="steps" if has_val else "no",
            eval_steps=(a.eval_steps or a.save_steps) if has_val else None,
            seed=a.seed,
            data_seed=a.data_order_seed,
            report_to="none",
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
            # on the CPU, accelerate starts a gloo process group and runs bf16 autocast only when told to use it
            use_cpu=_device_type() == "cpu",
        )

    def _setup_trainer(self) -> None:
        from transformers import DataCollatorForSeq2Seq, Trainer

        collator = DataCollatorForSeq2Seq(self.tokenizer, padding=True, pad_to_multiple_of=8, return_tensors="pt")
        self.trainer = Trainer(
            model=self.model,
            args=self._training_arguments(),
            train_dataset=self.train_dataset,
            eval_dataset=self.val_dataset or None,
            data_collator=collator,
            callbacks=[_loss_log_callback(self.output_dir / LOSS_LOG_FILE), _finite_training_callback()],
        )

    # -- run ---------------------------------------------------------------------------------------
    def _run_facts(self) -> dict:
        import peft
        import torch
        import transformers

        from hyplora.harness.distributed import sharding_report

        trainable, total = self.model.get_nb_trainable_parameters()
        return {
            "world_size": self.world_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "precision": self._precision(),
            "sharding": sharding_report(self.model),
            "trainable_params": trainable,
            "total_params": total,
            "trainable_percent": round(100 * trainable / total, 4),
            "resumed_from": str(self.checkpoint) if self.checkpoint else None,
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
            **self.data_report,
        }

    def train(self) -> dict:
        """Run Trainer (from `self.checkpoint` when resuming) and a final validation pass.

        Returns:
            `dict` with `train_loss` (mean over this call's steps), `val_loss` (None without a
            validation set), `steps` and `runtime_s`.
        """
        if self.trainer is None:
            raise RuntimeError("call setup() before train()")
        if is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            facts = self._run_facts()
            self.run_record = {"args": self.args.to_json(), "run": facts}
            if self.checkpoint is None:  # a resumed run's record (a finished run's result too) stays until save()
                _write_json(self.output_dir / ARGS_FILE, self.run_record)
            logger.info(
                f"{self.args.method} r={self.args.rank} alpha={self.args.alpha:g} on {self.args.model}:"
                f" {facts['trainable_params']:,} trainable params ({facts['trainable_percent']:.3f}%),"
                f" {facts['train_examples']} train / {facts['val_examples']} validation examples,"
                f" {self.world_size} process(es) x {self.args.micro_batch_size} x {self.gradient_accumulation_steps} accumulation"
                + (f", resuming from {self.checkpoint.name}" if self.checkpoint else "")
            )
        start = time.perf_counter()
        output = self.trainer.train(resume_from_checkpoint=str(self.checkpoint) if self.checkpoint else None)
        val_loss = None
        if self.val_dataset:  # evaluate the final adapter unless the last step already did
            state = self.trainer.state
            final = [
                entry["eval_loss"]
                for entry in state.log_history
                if "eval_loss" in entry and entry["step"] == state.global_step
            ]
            val_loss = final[-1] if final else self.trainer.evaluate()["eval_loss"]
        return {
            "train_loss": output.training_loss,
            "val_loss": val_loss,
            "steps": output.global_step,
            "runtime_s": round(time.perf_counter() - start, 1),
        }

    def save(self, result: dict) -> Path:
        """Save the adapter (safetensors), check it is complete, and write the run record and plot."""
        self.trainer.save_model(str(self.output_dir))
        if self.trainer.is_world_process_zero():
            self._check_saved_adapter()
            _write_json(self.output_dir / ARGS_FILE, {**self.run_record, "result": result})
            plot_loss(self.trainer.state.log_history, self.output_dir / LOSS_PLOT_FILE)
        return self.output_dir

    def _check_saved_adapter(self) -> None:
        """Guard against empty or sharded saves (seen with FSDP1 wrap policies, see peft-integration notes)."""
        from safetensors import safe_open

        trainable = [param for param in self.model.parameters() if param.requires_grad]
        with safe_open(self.output_dir / "adapter_model.safetensors", framework="pt") as saved:
            saved_numel = sum(math.prod(saved.get_slice(key).get_shape()) for key in saved.keys())
            saved_count = len(list(saved.keys()))
        expected_numel = sum(param.numel() for param in trainable)
        if saved_count != len(trainable) or saved_numel != expected_numel:
            raise RuntimeError(
                f"saved adapter in {self.output_dir} is incomplete: {saved_count} tensors / {saved_numel} values,"
                f" expected {len(trainable)} / {expected_numel}"
            )


def train(args: TrainArgs) -> Path:
    """Fine-tune `args.model` with `args.method` on `args.data`; return the adapter folder."""
    recipe = FineTuneRecipe(args)
    with output_dir_lock(recipe.output_dir):
        recipe.setup()
        result = recipe.train()
        return recipe.save(result)


@contextlib.contextmanager
def output_dir_lock(output_dir: Path):
    """Hold `output_dir/.train.lock` (main process only) for a run, so that a second `train` into the same folder
    is refused in one line instead of overwriting the first one's checkpoints."""
    if not is_main_process():
        yield
        return
    from filelock import FileLock, Timeout

    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(output_dir / ".train.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise InputError(f"--output-dir {output_dir}: another hyplora train is writing this folder") from None
    try:
        yield
    finally:
        lock.release()
