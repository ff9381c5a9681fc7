"""`python -m hyplora.harness.lm_eval ARGS`: lm-eval's command line with `hyplora-hf` and the hyplora tasks."""

import sys

from hyplora.errors import InputError
from hyplora.harness.lm_eval import run_cli

try:
    sys.exit(run_cli(sys.argv[1:]))
except InputError as err:
    sys.exit(f"python -m hyplora.harness.lm_eval: error: {err}")
