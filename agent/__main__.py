"""``python -m agent`` is ``paystation-agent``."""

import sys

from agent.cli import main

sys.exit(main())
