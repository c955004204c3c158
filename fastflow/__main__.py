"""``python -m fastflow``: the ``fastflow`` command (fastflow/cli.py)."""
import sys

from .cli import main

sys.exit(main())
