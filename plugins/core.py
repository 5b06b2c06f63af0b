"""The shared plugin: optimizers, schedules, common augmentations, the synthetic data set, smp models,
the pointwise floor model, and the MLflow and TensorBoard trackers."""

from harness.api import hookimpl
from plugins.components import augmentations, datasets, losses, optimizers, schedules, trackers
from plugins.components.nets import pointwise, smp_models

__version__ = "0.1.0"


@hookimpl
def bench_models():
    return {"smp": smp_models.smp_model, "pointwise": pointwise.pointwise}


@hookimpl
def bench_losses():
    return {"top_k_bce": losses.top_k_bce}


@hookimpl
def bench_optimizers():
    return {
        "adam": optimizers.adam,
        "adamw": optimizers.adamw,
        "rmsprop": optimizers.rmsprop,
        "sgd": optimizers.sgd,
    }


@hookimpl
def bench_schedules():
    return {
        "constant": schedules.constant,
        "step": schedules.step,
        "piecewise_cyclic": schedules.piecewise_cyclic,
        "cosine": schedules.cosine,
    }


@hookimpl
def bench_augmentations():
    return {
        "hflip": augmentations.hflip,
        "shift_scale_rotate": augmentations.shift_scale_rotate,
        "brightness": augmentations.brightness,
        "contrast": augmentations.contrast,
        "saturation": augmentations.saturation,
        "hsv": augmentations.hsv,
        "grayscale": augmentations.grayscale,
    }


@hookimpl
def bench_datasets():
    return {"synthetic": datasets.synthetic}


@hookimpl
def bench_trackers():
    return {"mlflow": trackers.mlflow, "tensorboard": trackers.tensorboard}
