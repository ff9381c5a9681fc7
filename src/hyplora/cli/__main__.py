import sys

from hyplora.cli import main

sys.exit(main())
