"""``python -m replica`` is the ``replica`` command."""

import sys

from replica.cli import main

sys.exit(main())
