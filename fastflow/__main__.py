"""python -m fastflow: the fastflow command (fastflow/apps/cli.py)."""
import sys

from .apps.cli import main

sys.exit(main())
