"""Silence, one by one, third-party messages a hyplora user cannot act on (installed on `import hyplora`).

Each filter matches one exact message at its source; every other warning and log record is left alone.

- bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" when it is imported on a CPU
  with AVX512-BF16 and the optional `kernels` package (which fetches a kernel from the Hub) is absent; PEFT
  imports bitsandbytes whenever it is installed, and its own CPU 4-bit kernel is used instead.
- transformers warns "`is_gradient_checkpointing` is deprecated" when PEFT's `PeftModel` reads that property.
"""

import logging
import warnings

_BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_KERNELS_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def _drop_bnb_kernels_message(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_BNB_KERNELS_MESSAGE)


def silence_unactionable_messages() -> None:
    """Install the filters above; call before bitsandbytes is imported (importing `hyplora` does)."""
    logging.getLogger(_BNB_LOGGER).addFilter(_drop_bnb_kernels_message)  # adding it twice keeps one
    warnings.filterwarnings(
        "ignore",
        message="`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        module="transformers.modeling_utils",
    )
