"""``python -m lithoscope.service`` is the ``lithoscope`` command."""

from lithoscope.service.cli import main

main()
