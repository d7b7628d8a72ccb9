"""``python -m agent`` is ``paystation-agent``."""

import sys

from agent.commands import main

sys.exit(main())
