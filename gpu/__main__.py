"""python -m gpu: the GPU session (gpu/cli.py)."""

import sys

from .cli import main

sys.exit(main())
