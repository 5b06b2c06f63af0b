"""Reading finished runs: the index of run folders, statistics over cars, ``bench compare``,
``bench report`` and ``bench ablate``."""
