"""``bench tune``: Optuna studies over a recipe's ``[tune]`` space, with fold-by-fold pruning, and
their summaries."""
