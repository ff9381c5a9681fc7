"""`python -m hyplora`: the `hyplora` command."""

import sys

from hyplora.cli import main

sys.exit(main())
