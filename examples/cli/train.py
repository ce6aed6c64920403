"""Configure the compression and pruning callbacks from YAML with LightningCLI.

Run it from the repository root::

    python examples/cli/train.py fit --config examples/cli/config.yaml
    python examples/cli/train.py fit --config examples/cli/config.yaml --trainer.max_epochs=3 --model.width=16

Every callback argument is a plain ``init_args`` entry of ``trainer.callbacks`` in ``config.yaml``; the
``class_path`` can be the short public name (``tetra_lightning.TensorCompressionCallback``) or the full one
(``tetra_lightning.callbacks.TensorCompressionCallback``). ``--print_config`` shows every available option.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.cli import LightningCLI

from tetra_lightning.data import DigitsDataModule
from tetra_lightning.models import DigitsCNN


def main(args: Sequence[str] | None = None, run: bool = True) -> LightningCLI:
    """Builds (and with ``run=True`` runs) the CLI; ``args=None`` reads ``sys.argv``."""
    return LightningCLI(
        DigitsCNN,
        DigitsDataModule,
        args=None if args is None else list(args),
        run=run,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
