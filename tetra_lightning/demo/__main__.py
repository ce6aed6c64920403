"""``python -m tetra_lightning.demo``: see :mod:`tetra_lightning.demo`."""

from __future__ import annotations

from tetra_lightning.demo.cli import main

if __name__ == "__main__":
    main()
