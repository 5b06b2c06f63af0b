"""alexander's recipe: LinkNet-ResNet34, BCE + (1 - Dice), hard negative mining, CLAHE.

Two LinkNets: ``linknet34`` is alexander's own network (``nets.linknet34``), ``linknet`` is smp's
Linknet, a different decoder and head under the same name (``nets.smp_models``).
"""

from harness.api import hookimpl
from plugins.components import augmentations, losses, mining
from plugins.components.nets import linknet34, smp_models

__version__ = "0.1.0"


@hookimpl
def bench_models():
    return {"linknet": smp_models.linknet, "linknet34": linknet34.linknet34}


@hookimpl
def bench_losses():
    return {"bce_dice": losses.bce_dice}


@hookimpl
def bench_callbacks():
    return {"hard_negative_mining": mining.hard_negative_mining}


@hookimpl
def bench_preprocessors():
    return {"clahe": augmentations.clahe}
