"""``python -m shardann.cli ...``: the ``shardann`` command.

It imports :func:`shardann.cli.main` rather than running the package as
``__main__``, so the command's error classes exist once and its errors are
one-line messages, not tracebacks."""

import sys

from shardann.cli import main

sys.exit(main())
