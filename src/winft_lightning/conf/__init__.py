"""Hydra configs (a package so that `pkg://winft_lightning.conf` resolves from any stage)."""
