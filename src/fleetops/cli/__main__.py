"""``python -m fleetops.cli``: the same as the ``fleetops`` command."""

from . import main

main()
