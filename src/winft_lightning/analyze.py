"""``python -m winft_lightning.analyze``: the entry point of :mod:`winft_lightning.stages.analyze`."""

from winft_lightning.stages.analyze import main

if __name__ == "__main__":
    main()
