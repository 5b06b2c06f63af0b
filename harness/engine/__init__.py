"""Training and prediction: compute chosen for the device, components assembled from a recipe, the
fold loop with validation and checkpoints, TTA and tiled prediction, the pseudo-label stage, and
``bench run``, which drives them into a run folder."""
