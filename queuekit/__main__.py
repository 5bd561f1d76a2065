"""``python -m queuekit`` is the ``worker`` command."""

import sys

from .cli import main

sys.exit(main())
