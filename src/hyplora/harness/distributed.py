"""Sharded training for `hyplora train --fsdp`, and the launch set-ups that would silently train otherwise.

FSDP2 here is transformers' own load-time sharding, `from_pretrained(distributed_config=DistributedConfig(
fsdp_size=WORLD_SIZE))`: `torch.distributed.fsdp.fully_shard` on the embeddings, each decoder layer, the final
norm with the head (the model's `_fsdp_plan`) and then the root, over the launcher's processes (gloo on CPU,
NCCL on CUDA). The frozen base weights become DTensor shards; the adapter, attached afterwards, stays a
replicated float32 tensor whose gradient Trainer averages over the processes (`Trainer._sync_replicated_trainable_parameters`), so every process holds the whole
adapter and `save_pretrained` writes it at full size. With `--precision bf16` the FSDP units also get a
`MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)` (the base is loaded in float32 and gathered
in bf16).

Launchers: `torchrun --nproc_per_node N` starts N processes on CPU or GPU. `accelerate launch --cpu
--num_processes N` starts one (its CPU launcher needs an MPI hostfile for more), and accelerate drops an FSDP
plugin whenever it runs on the CPU (DDP instead): `check_launch` refuses both.
"""

from __future__ import annotations

import os

from hyplora.errors import InputError

TORCHRUN_HINT = "torchrun --nproc_per_node N -m hyplora.cli train --fsdp ..."


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def check_launch(*, fsdp: bool, precision: str, world_size: int, resume: bool, cuda: bool) -> None:
    """Refuse, in one line, a launch that would not shard (or not start the processes) it was asked to.

    Raises:
        InputError: accelerate's FSDP config without CUDA (accelerate would run DDP), `--fsdp` together with
            accelerate's FSDP config, `--fsdp` on one process, `--fsdp` with fp16 or `--resume`, and
            `accelerate launch --cpu --num_processes N > 1` (it started one process).
    """
    accelerate_fsdp = _env_true("ACCELERATE_USE_FSDP")
    if accelerate_fsdp and not cuda:
        raise InputError(
            "accelerate's FSDP config without a CUDA GPU would train with DDP (accelerate drops FSDP on the CPU):"
            f" shard on CPU with `{TORCHRUN_HINT}`"
        )
    if accelerate_fsdp and fsdp:
        raise InputError("--fsdp and accelerate's FSDP config both shard the model: use one of them")
    # accelerate's CPU launcher sets MASTER_ADDR for --num_processes > 1 but starts a single process (no WORLD_SIZE)
    if _env_true("ACCELERATE_USE_CPU") and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        raise InputError(
            "accelerate launch --cpu --num_processes N started one process (its CPU launcher needs an MPI hostfile):"
            " launch N CPU processes with `torchrun --nproc_per_node N -m hyplora.cli train ...`"
        )
    if not fsdp:
        return
    if world_size < 2:
        raise InputError(f"--fsdp shards over the launcher's processes, and this is one: launch `{TORCHRUN_HINT}`")
    if precision == "fp16":
        raise InputError("--fsdp --precision fp16: FSDP2 mixed precision is bf16 here; use --precision bf16 or fp32")
    if resume:
        raise InputError(
            "--fsdp --resume: Trainer does not checkpoint the optimizer of a model sharded at load time,"
            " so an --fsdp run cannot resume (its checkpoint-<step> folders hold the adapter only)"
        )


def distributed_config(*, world_size: int, precision: str):
    """`DistributedConfig(fsdp_size=world_size)`, with transformers' bf16 `MixedPrecisionPolicy` for bf16."""
    from transformers.distributed import DistributedConfig

    return DistributedConfig(fsdp_size=world_size, fsdp_mixed_precision=precision == "bf16")


def sharding_report(model) -> dict:
    """How the model is sharded: FSDP2 units, DTensor parameters (of all, and of the trainable ones), and whether
    the FSDP units were given the bf16 `MixedPrecisionPolicy` (None: not sharded at load time)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    params = list(model.parameters())
    config = getattr(model.config, "distributed_config", None)
    return {
        "fsdp_units": sum(isinstance(module, FSDPModule) for module in model.modules()),
        "dtensor_params": sum(isinstance(param, DTensor) for param in params),
        "params": len(params),
        "trainable_dtensor_params": sum(isinstance(param, DTensor) for param in params if param.requires_grad),
        "fsdp_mixed_precision": None if config is None else config.fsdp_mixed_precision,
    }
