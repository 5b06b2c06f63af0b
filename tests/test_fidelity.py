"""The faithful recipes against the original code (docs/fidelity.md): what a test can say of them.

Each expected value is the original's formula, written as the original wrote it (file:line in
asanakoy/kaggle_carvana_segmentation), and compared with what segbench trains, epoch by epoch.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from harness.engine.assembly import Assembly
from harness.recipe.schema import load_recipe

FIDELITY_PAGE = Path(__file__).resolve().parent.parent / "docs" / "fidelity.md"
STATED = re.compile(r"`([a-z_][a-z0-9_.]*) = ([^`]+)`")  # `train.epochs = 52` in the segbench column


def stated_values() -> list[tuple[str, str, str, str]]:
    """``(recipe file, profile, dotted key, TOML value)`` of every value docs/fidelity.md says a recipe
    holds: the backticked assignments of each table's third column, under the heading naming the
    recipe; those after `` `--profile NAME`: `` hold with that profile ("" for none)."""
    stated, recipe = [], None
    for line in FIDELITY_PAGE.read_text().splitlines():
        heading = re.match(r"## .*`(recipes/[a-z_]+\.toml)`", line)
        if heading or line.startswith("## "):
            recipe = heading.group(1) if heading else None
        elif recipe and line.startswith("| ") and not line.startswith("| item"):
            parts = re.split(r"`--profile ([a-z0-9_]+)`:", line.split(" | ")[2])
            for profile, text in zip([""] + parts[1::2], parts[0::2]):
                stated += [(recipe, profile, key, value) for key, value in STATED.findall(text)]
    return stated


def vladimir_lr(epoch: int) -> float:
    """ternaus/src/utils.py:57-60,79,93-96: epochs count from 1, a new Adam every epoch at this lr."""
    original_epoch = epoch + 1
    return 1e-4 * 0.5 ** ((original_epoch % 5) // 2)


def alexander_lr(epoch: int) -> float:
    """albu/src/train.py:64-76,165-171: lr 1e-4 x 0.1 ** (epoch // 12) until cycle_start_epoch 23, then
    a new Adam and 1e-4 x 0.1 ** (((epoch - 23) % 5) // 2)."""
    if epoch >= 23:
        return 1e-4 * 0.1 ** (((epoch - 23) % 5) // 2)
    return 1e-4 * 0.1 ** (epoch // 12)


def artsiom_vgg_lr(epoch: int) -> float:
    """asanakoy/run_train.py:150-163 (VggCyclicLr, cycle 20, start 0: the second call of
    train_vgg11v1.sh resumes at epoch 15 without --reset_lr) with --lr=0.0001."""
    in_cycle = epoch % 20
    if in_cycle < 10:
        return 1e-4
    return 1e-4 * 0.1 if in_cycle < 15 else 1e-4 * 0.1 ** 2


def artsiom_unet_lr(epoch: int) -> float:
    """asanakoy/run_train.py (StepLR(step_size=100, gamma=0.5), stepped with the epoch before it trains),
    train_scratch.sh: --lr=0.005 --decay_step=100 --decay_gamma=0.5, 250 epochs."""
    return 0.005 * 0.5 ** (epoch // 100)


@pytest.mark.parametrize("recipe, epochs, original", [
    ("recipes/vladimir.toml", 52, vladimir_lr),
    ("recipes/alexander.toml", 40, alexander_lr),
    ("recipes/artsiom.toml", 60, artsiom_vgg_lr),
    ("recipes/artsiom_unet.toml", 250, artsiom_unet_lr),
])
def test_every_epochs_learning_rate_is_the_originals(plugins, recipe, epochs, original):
    table = Assembly(load_recipe(recipe, plugins), plugins).epoch_table()
    assert len(table) == epochs
    assert [row["lr"] for row in table] == pytest.approx([original(epoch) for epoch in range(epochs)], rel=1e-9)


def test_fresh_optimizers_where_the_original_built_them(plugins):
    def fresh(recipe: str) -> list[int]:
        table = Assembly(load_recipe(recipe, plugins), plugins).epoch_table()
        return [row["epoch"] for row in table if row["new_optimizer"]]

    assert fresh("recipes/vladimir.toml") == list(range(52))  # utils.py:95: init_optimizer(lr) every epoch
    assert fresh("recipes/alexander.toml") == [0, 23]  # train.py:165-167
    rmsprop = Assembly(load_recipe("recipes/alexander.toml", plugins, ["f04a_clahe_rmsprop"]), plugins).epoch_table()
    assert {row["optimizer"] for row in rmsprop[:23]} == {"rmsprop"} and {row["optimizer"] for row in rmsprop[23:]} == {"adam"}
    assert fresh("recipes/artsiom.toml") == [0]  # the second call resumes the optimizer's state
    assert fresh("recipes/artsiom_unet.toml") == [0]


def test_artsiom_vgg_drops_colour_augmentation_at_epoch_15(plugins):
    table = Assembly(load_recipe("recipes/artsiom.toml", plugins), plugins).epoch_table()
    assert table[14]["augment"] == ["hflip", "shift_scale_rotate", "brightness", "contrast", "saturation", "grayscale"]
    assert table[15]["augment"] == table[59]["augment"] == ["hflip", "shift_scale_rotate"]


def _resolved(recipe, dotted: str):
    value = recipe.model_dump(mode="json")
    for part in dotted.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


@pytest.mark.parametrize("recipe, profile, key, value", stated_values(), ids=lambda item: str(item))
def test_the_fidelity_page_states_what_the_recipes_hold(plugins, recipe, profile, key, value):
    resolved = load_recipe(recipe, plugins, [profile] if profile else [])
    assert _resolved(resolved, key) == tomllib.loads(f"v = {value}")["v"]


def test_the_fidelity_page_states_values_for_every_recipe():
    recipes = {recipe for recipe, *_ in stated_values()}
    assert recipes == {f"recipes/{name}.toml" for name in ("vladimir", "alexander", "artsiom", "artsiom_unet")}
    assert len(stated_values()) > 80
