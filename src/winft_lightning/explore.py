"""``python -m winft_lightning.explore``: the entry point of :mod:`winft_lightning.stages.explore`."""

from winft_lightning.stages.explore import main

if __name__ == "__main__":
    main()
