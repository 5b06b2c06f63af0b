"""Segmentation networks that the recipe plugins register (this package has no hooks).

* ``ternausnet``: ``unet11`` (vladimir's TernausNet) and ``wide_unet11`` (artsiom's VGG11-UNet).
* ``unet``: ``unet``, artsiom's plain UNet from random init.
* ``smp_models``: ``linknet`` (alexander) and ``smp_model``, any smp architecture and encoder.

Every factory takes keyword parameters only and resolves ``encoder_weights`` with
``harness.recipe.weights``. Submodules are imported by whoever needs them, not here, so that importing one
network does not pay for the others (smp pulls in timm and huggingface_hub).
"""
