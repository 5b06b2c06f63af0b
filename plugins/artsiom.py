"""artsiom's recipe: a wide VGG11-UNet and a UNet from scratch, border-weighted BCE + Dice."""

from harness.api import hookimpl
from plugins.components import losses
from plugins.components.nets import ternausnet, unet

__version__ = "0.1.0"


@hookimpl
def bench_models():
    return {"wide_unet11": ternausnet.wide_unet11, "unet": unet.unet}


@hookimpl
def bench_losses():
    return {"weighted_bce_dice": losses.weighted_bce_dice}
