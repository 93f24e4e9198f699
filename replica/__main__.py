"""``python -m replica`` is the ``replica`` command."""

import sys

from replica.cli.commands import main

sys.exit(main())
