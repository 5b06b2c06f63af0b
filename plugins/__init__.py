"""segbench's built-in plugins.

Each module named in ``pyproject.toml``'s ``bench`` entry-point group is one plugin, loaded exactly
like a third-party plugin. ``core`` holds what every recipe family shares (optimizers, schedules,
common augmentations, the synthetic data set, any smp architecture); ``vladimir``, ``alexander`` and
``artsiom`` hold what is particular to each Carvana recipe. The modules without hooks
(``losses``, ``schedules``, ``nets``, ...) hold the implementations the plugins register.
"""
