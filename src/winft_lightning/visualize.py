"""``python -m winft_lightning.visualize``: the entry point of :mod:`winft_lightning.stages.visualize`."""

from winft_lightning.stages.visualize import main

if __name__ == "__main__":
    main()
