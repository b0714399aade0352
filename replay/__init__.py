"""lithoscope.replay: readers for recorded movies and archives, fed to the service's publisher."""

from __future__ import annotations
