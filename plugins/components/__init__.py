"""The implementations that the built-in plugins register (this package has no hooks): networks
(``nets``), losses, optimizers, schedules, augmentations and preprocessors, training callbacks
(``mining``), data sources, and the ensemble's merger and post-processors (``merging``)."""
