"""``python -m rnnkit``: the ``rnnkit`` command, also as ``torchrun ... -m rnnkit train ...``."""

from rnnkit.cli import console

if __name__ == "__main__":
    console()
