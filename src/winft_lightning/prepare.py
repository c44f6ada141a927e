"""``python -m winft_lightning.prepare``: the entry point of :mod:`winft_lightning.stages.prepare`."""

from winft_lightning.stages.prepare import main

if __name__ == "__main__":
    main()
