"""vladimir's recipe (TernausNet): UNet11, BCE - log(Dice), colour changes of the car's pixels only."""

from harness.api import hookimpl
from plugins.components import augmentations, losses
from plugins.components.nets import ternausnet

__version__ = "0.1.0"


@hookimpl
def bench_models():
    return {"unet11": ternausnet.unet11}


@hookimpl
def bench_losses():
    return {"bce_log_dice": losses.bce_log_dice}


@hookimpl
def bench_augmentations():
    return {"car_hsv_or_gray": augmentations.car_hsv_or_gray}
