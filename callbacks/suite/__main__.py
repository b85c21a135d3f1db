"""``python -m callbacks.suite ...``: see :mod:`callbacks.suite.cli`."""

from callbacks.suite.cli import main

main()
