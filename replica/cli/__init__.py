"""cli: the ``replica`` command — argparse (``commands``), the daemon and its endpoint (``daemon``),
its config file (``config``), logs, metrics, ``status``/``reset`` from outside, and the demo.

May import: everything, including ``replica.testing`` (the demo runs the fake).
Never imported by: any library layer; it is the top.
"""

from replica.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
