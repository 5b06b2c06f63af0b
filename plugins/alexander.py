"""alexander's recipe: LinkNet-ResNet34, BCE + (1 - Dice), hard negative mining, CLAHE."""

from harness.api import hookimpl
from plugins.components import augmentations, losses, mining
from plugins.components.nets import smp_models

__version__ = "0.1.0"


@hookimpl
def bench_models():
    return {"linknet": smp_models.linknet}


@hookimpl
def bench_losses():
    return {"bce_dice": losses.bce_dice}


@hookimpl
def bench_callbacks():
    return {"hard_negative_mining": mining.hard_negative_mining}


@hookimpl
def bench_preprocessors():
    return {"clahe": augmentations.clahe}
