"""The Lightning parts: the four LightningModules, callbacks, loggers, optimiser schedules."""
