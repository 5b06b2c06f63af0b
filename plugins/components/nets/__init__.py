"""Segmentation networks that the recipe plugins register (this package has no hooks).

* ``ternausnet``: ``unet11`` (vladimir's TernausNet) and ``wide_unet11`` (artsiom's VGG11-UNet).
* ``unet``: ``unet``, artsiom's plain UNet from random init.
* ``linknet34``: ``linknet34``, alexander's own LinkNet34 as the 1st-place code built it.
* ``smp_models``: ``linknet`` (smp's Linknet, which alexander's recipe used first) and ``smp_model``,
  any smp architecture and encoder.

Every factory takes keyword parameters only and resolves ``encoder_weights`` with
``harness.api.load_encoder_weights``. Submodules are imported by whoever needs them, not here, so that
importing one network does not pay for the others (smp pulls in timm and huggingface_hub).
"""
