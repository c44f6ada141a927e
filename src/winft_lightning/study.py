"""``python -m winft_lightning.study``: the entry point of :mod:`winft_lightning.stages.study`."""

from winft_lightning.stages.study import main

if __name__ == "__main__":
    main()
