"""segbench's built-in plugins.

The modules here register; ``plugins.components`` implements. Each module named in
``pyproject.toml``'s ``bench`` entry-point group is one plugin, loaded exactly like a third-party
plugin: ``core`` registers what every recipe family shares (optimizers, schedules, common
augmentations, the synthetic data set, any smp architecture); ``vladimir``, ``alexander`` and
``artsiom`` what is particular to each Carvana recipe; ``merge`` the ensemble's merger and
post-processors. Like any plugin, they import from ``harness.api`` only.
"""
