"""Recipes: the seed files load, profiles and --set resolve, and every mistake is one clear line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from harness.errors import BenchError
from harness.recipe.schema import load_recipe

REPO = Path(__file__).resolve().parents[1]

RECIPES = sorted((REPO / "recipes").glob("*.toml"))


def write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


MINIMAL = """
name = "tiny"
[model]
name = "linknet"
encoder = "resnet18"
[loss]
name = "bce_dice"
[optimizer]
name = "adam"
lr = 1e-3
[train]
epochs = 2
batch_size = 4
[profiles.short.train]
epochs = 1
"""


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_and_profile_loads(path, plugins):
    profiles = tomllib.loads(path.read_text()).get("profiles", {})
    assert "quick" in profiles, f"{path.name} has no quick profile"
    load_recipe(path, plugins)
    for profile in profiles:
        load_recipe(path, plugins, [profile])


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("profiles", [[], ["quick"], ["quick", "own_folds"]], ids="+".join)
def test_every_recipe_tunes_as_it_is_and_on_a_quick_budget(path, profiles, plugins):
    """bench tune checks its space before any trial: each recipe's own values lie inside it, also once a
    profile has moved them (a quick profile's learning rate, say), and every bound gives a valid recipe."""
    from harness.tune.search_space import SearchSpace

    SearchSpace(load_recipe(path, plugins, profiles), plugins, path.name).check()


def test_every_quick_profile_reads_the_images_every_carvana_layout_folder_has(plugins):
    """A quick look at a user's own data must not need Carvana's train_hq/: the quick profiles read train/."""
    assert {load_recipe(path, plugins, ["quick"]).data.images for path in RECIPES} == {"standard"}


def test_every_quick_profile_buys_the_same_seconds_on_the_same_folds_inputs_and_start(plugins):
    """The quick profiles rank recipes on equal terms: the same seconds of steps (each recipe's steps follow
    from its own speed), epochs, batch, folds, input scale and crops, and ImageNet weights wherever the model
    has an encoder to take them."""
    quick = [load_recipe(path, plugins, ["quick"]) for path in RECIPES]
    terms = {(r.train.budget_seconds, r.train.steps_per_epoch, r.train.epochs, r.train.batch_size, r.train.accumulate,
              r.train.validate_images, r.folds.k, r.folds.method, r.input.size, r.input.object_size, r.input.crop,
              r.data.source.model_dump_json()) for r in quick}
    assert len(terms) == 1, terms
    assert next(iter(terms))[:2] == (240, None), "a budget in time, not in steps"
    assert {r.model.params.get("encoder_weights", "no encoder") for r in quick} == {"auto", "no encoder"}


def test_faithful_values_survive_validation(plugins):
    alexander = load_recipe(REPO / "recipes/alexander.toml", plugins)
    assert alexander.train.grad_clip == 1.0 and alexander.predict.tta == "hflip"
    assert alexander.schedule.params["lead"] == ((1.0, 12), (0.1, 11))
    assert [a.name for a in alexander.augment] == ["hflip", "shift_scale_rotate", "brightness", "hsv"]
    artsiom = load_recipe(REPO / "recipes/artsiom.toml", plugins)
    assert (artsiom.folds.k, artsiom.folds.method, artsiom.folds.seed) == (7, "stratified_kfold", 1993)
    assert (artsiom.train.batch_size, artsiom.train.accumulate, artsiom.train.accumulation) == (1, 4, "sum_from_first")
    vladimir = load_recipe(REPO / "recipes/vladimir.toml", plugins)
    assert vladimir.pseudo_label is None  # no code for it in the original: a profile, off by default
    enabled = load_recipe(REPO / "recipes/vladimir.toml", plugins, ["quick", "pseudo"])
    assert enabled.pseudo_label.uncertain == (0.05, 0.95) and enabled.pseudo_label.max_uncertain_share == 0.005


def test_profiles_and_sets_resolve_in_order(plugins):
    recipe = load_recipe(
        REPO / "recipes/alexander.toml", plugins, ["quick", "f04a_clahe_rmsprop"],
        ["train.epochs=7", "data.root=/some/folder", "augment.0.p=1.0", "input.size=[128, 96]"],
    )
    assert recipe.train.epochs == 7 and recipe.train.batch_size == 8
    assert recipe.optimizer.name == "rmsprop" and recipe.optimizer.params == {"lr": 1e-3}
    assert [p.name for p in recipe.preprocess] == ["clahe"]
    assert recipe.data.root == "/some/folder" and recipe.augment[0].params["p"] == 1.0
    assert recipe.input.size == (128, 96)


def test_resolved_recipe_round_trips(plugins, tmp_path):
    recipe = load_recipe(REPO / "recipes/vladimir.toml", plugins, ["quick"])
    again = load_recipe(write(tmp_path, recipe.to_toml()), plugins)
    assert again == recipe


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("epochs = 2", "epohcs = 2", "r.toml: unknown key 'train.epohcs' (did you mean 'epochs'?)"),
        ('name = "tiny"', 'name = "tiny"\ncolour = 1', "r.toml: unknown key 'colour'"),
        ("[train]", "[folds]\nk = 'five'\n[train]", "r.toml: key 'folds.k': Input should be a valid integer"),
        ("[train]", "[predict]\ntta = 'hflp'\n[train]", "r.toml: key 'predict.tta': Input should be"),
        ('"bce_dice"', '"bce_dise"', "r.toml: unknown loss 'bce_dise' at key 'loss.name' (did you mean 'bce_dice'"),
        ('"bce_dice"', '"bce_dice"\nper_imag = true', "key 'loss.per_imag' of loss 'bce_dice': unknown key (did you mean 'per_image'?)"),
        ('"bce_dice"', '"bce_dice"\nper_image = "maybe"', "key 'loss.per_image' of loss 'bce_dice': Input should be a valid boolean"),
        ("[train]", "[schedule]\nname = 'piecewise_cyclic'\ncycle = []\n[train]", "key 'schedule' (schedule 'piecewise_cyclic'): cycle must hold"),
        ("[train]", "[[augment]]\nname = 'hflipp'\n[train]", "unknown augmentation 'hflipp' at key 'augment.0.name' (did you mean 'hflip'"),
        ("[train]", "[input]\nsize = 64\n[train]", "key 'input': input.size = 64 (a short side) needs fit = 'resize'"),
        ("epochs = 2", "epochs = 2\nsteps_per_epoch = 0", "key 'train.steps_per_epoch': Input should be greater than or equal to 1"),
        ("epochs = 2", "epochs = 2\nbudget_seconds = 0", "key 'train.budget_seconds': Input should be greater than 0"),
        ("[train]", "[input]\nsize = 'objects'\nfit = 'resize'\n[train]",
         "key 'input': input.size = 'objects' needs fit = 'pad'"),
        ("[train]", "[input]\nobject_size = 32\n[train]", "key 'input': input.object_size is read only with size = 'objects'"),
        ("[train]", "[input]\ncrop = 100\n[train]", "key 'input': input.crop 100x100 is not a multiple of 32 on both sides"),
        ("[train]", "[input]\nfit = 'resize'\nsize = 16\n[train]",
         "key 'input.size' fits none of its forms: Input should be a valid tuple; Input should be greater than or "
         "equal to 32; Input should be 'original' or 'objects' (got 16)"),
        ("[train]", "[tune.space]\n'optimizer.lr' = { type = 'float', low = 'x', high = 1.0 }\n[train]",
         "key 'tune.space.optimizer.lr.float.low': Input should be a valid number"),
        ("[train]", "[folds]\nmethod = 'file'\n[train]", "key 'folds.file': method 'file' needs folds.file"),
        ("[train]", "[folds]\nfile = 'f.csv'\n[train]",
         "key 'folds.file': a folds file is read only by method 'file', not 'rank_by_area'"),
        ("[train]", "[folds]\nmethod = 'kfold'\nview = '05'\n[train]",
         "key 'folds.view': a view is used only by method 'rank_mod_k', not 'kfold'"),
        ("[train]", "[folds]\nmethod = 'rank_mod_k'\nview = 'front'\n[train]",
         "key 'folds.view': a view is two digits, as in <carid>_05.jpg (got 'front')"),
        ("[train]", "[folds]\nmethod = 'random'\n[train]",
         "key 'folds.method': Input should be 'rank_by_area', 'stratified_by_area', 'rank_mod_k', 'kfold', "
         "'stratified_kfold' or 'file'"),
    ],
)
def test_bad_recipe_is_one_line_naming_file_and_key(tmp_path, plugins, old, new, message):
    path = write(tmp_path, MINIMAL.replace(old, new, 1))
    with pytest.raises(BenchError) as error:
        load_recipe(path, plugins)
    assert message in str(error.value)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


FOLDS_PROFILES = """
[folds]
method = "rank_mod_k"
view = 5
[profiles.quick]
folds = { k = 3, method = "rank_by_area" }
[profiles.total.folds]
method = "rank_mod_k"
[profiles.own_file.folds]
method = "file"
file = "folds.csv"
[profiles.bad.folds]
method = "kfold"
file = "folds.csv"
"""


def test_folds_keys_of_one_method_go_when_a_profile_or_set_changes_the_method(tmp_path, plugins):
    """A profile cannot delete a key: one that changes folds.method drops view and file that the new
    method does not read, unless it sets them itself (then they are checked as usual)."""
    path = write(tmp_path, MINIMAL + FOLDS_PROFILES)
    folds = load_recipe(path, plugins).folds
    assert (folds.method, folds.view, folds.file) == ("rank_mod_k", "05", None)  # view 5 is view "05"
    quick = load_recipe(path, plugins, ["quick"])
    assert (quick.folds.k, quick.folds.method, quick.folds.view) == (3, "rank_by_area", None)
    assert "view" not in quick.to_toml()
    assert load_recipe(path, plugins, ["total"]).folds.view == "05", "same method: the view stays"
    own = load_recipe(path, plugins, ["own_file"]).folds
    assert (own.method, own.file, own.view) == ("file", "folds.csv", None)
    assert load_recipe(path, plugins, [], ["folds.method=kfold"]).folds.view is None
    assert load_recipe(path, plugins, [], ["folds.view=16"]).folds.view == "16"
    with pytest.raises(BenchError, match=r"profile 'bad' of .*r.toml: key 'folds.file': .*not 'kfold'"):
        load_recipe(path, plugins, ["bad"])


def test_unset_folds_keys_leave_the_resolved_recipe_as_it_was(tmp_path, plugins):
    """view and file are None unless given, and None is left out of the TOML the recipe hash is of."""
    recipe = load_recipe(write(tmp_path, MINIMAL), plugins)
    assert tomllib.loads(recipe.to_toml())["folds"] == {"k": 5, "method": "rank_by_area", "seed": 0}


def test_unset_fold_average_leaves_the_predict_table_as_it_was(tmp_path, plugins):
    """predict.fold_average (the originals' uint8 merge of the folds) is left out unless given."""
    recipe = load_recipe(write(tmp_path, MINIMAL), plugins)
    assert recipe.predict.fold_average is None
    assert tomllib.loads(recipe.to_toml())["predict"] == {"tta": "none", "average": "logits", "threshold": 0.5}
    floored = load_recipe(write(tmp_path, MINIMAL), plugins, [], ["predict.fold_average=uint8_floor"])
    assert tomllib.loads(floored.to_toml())["predict"]["fold_average"] == "uint8_floor"
    with pytest.raises(BenchError, match=r"predict\.fold_average"):
        load_recipe(write(tmp_path, MINIMAL), plugins, [], ["predict.fold_average=uint8_ceil"])


def test_missing_key_and_bad_toml(tmp_path, plugins):
    with pytest.raises(BenchError, match=r"missing key 'model'"):
        load_recipe(write(tmp_path, MINIMAL.replace('[model]\nname = "linknet"\nencoder = "resnet18"\n', "")), plugins)
    with pytest.raises(BenchError, match=r"unknown key 'trainx' \(did you mean 'train'\?\) \(and 1 more\)"):
        load_recipe(write(tmp_path, MINIMAL.replace("[train]", "[trainx]")), plugins)
    with pytest.raises(BenchError, match=r"r.toml: not valid TOML"):
        load_recipe(write(tmp_path, "name = "), plugins)
    with pytest.raises(BenchError, match=r"nope.toml: recipe file not found"):
        load_recipe(tmp_path / "nope.toml", plugins)


def test_errors_name_the_profile_or_flag_they_came_from(tmp_path, plugins):
    path = write(tmp_path, MINIMAL + "[profiles.bad.train]\nepochs = -1\n")
    with pytest.raises(BenchError, match=r"profile 'bad' of .*r.toml: key 'train.epochs'"):
        load_recipe(path, plugins, ["bad"])
    with pytest.raises(BenchError, match=r"--set optimizer.lrr=1: key 'optimizer.lrr' of optimizer 'adam': unknown key \(did you mean 'lr'\?\)"):
        load_recipe(path, plugins, [], ["optimizer.lrr=1"])
    with pytest.raises(BenchError, match=r"no profile 'shrot'.*did you mean 'short'"):
        load_recipe(path, plugins, ["shrot"])
    with pytest.raises(BenchError, match=r"--set train: expected KEY=VALUE"):
        load_recipe(path, plugins, [], ["train"])
    with pytest.raises(BenchError, match=r"--set augment.3.p: augment is a list of 0"):
        load_recipe(path, plugins, [], ["augment=[]", "augment.3.p=1"])
    with pytest.raises(BenchError, match=r"--set augment.p: augment is a list of 1 .* e.g. augment.0"):
        load_recipe(path, plugins, [], ["augment=[{name = 'hflip'}]", "augment.p=1"])
    with pytest.raises(BenchError, match=r"--set train.epochs.x: train.epochs is a value, not a table"):
        load_recipe(path, plugins, [], ["train.epochs.x=1"])
    with pytest.raises(BenchError, match=r"--set train.0: train is a table, not a list"):
        load_recipe(path, plugins, [], ["train.0=1"])
    bad_profiles = write(tmp_path, MINIMAL.replace("[profiles.short.train]\nepochs = 1", "[profiles]\nshort = 3"), "p.toml")
    with pytest.raises(BenchError, match=r"p.toml: 'profiles' must hold tables"):
        load_recipe(bad_profiles, plugins, ["short"])


def test_bench_show_prints_resolved_toml(bench):
    result = bench("show", REPO / "recipes/alexander.toml", "--profile", "quick", "--set", "train.epochs=2")
    assert result.code == 0, result.err
    resolved = tomllib.loads(result.out)
    assert resolved["train"]["epochs"] == 2 and resolved["model"]["encoder_weights"] == "auto"
    assert "profiles" not in resolved


@pytest.mark.parametrize(
    "old, new, needle",
    [
        ("epochs = 2", "epohcs = 2", "unknown key 'train.epohcs'"),
        ("epochs = 2", "epochs = 'two'", "key 'train.epochs': Input should be a valid integer"),
        ('"linknet"', '"linknt"', "unknown model 'linknt'"),
        ("epochs = 2", "epochs = [2]", "(got [2])"),  # brackets are text, not terminal markup
    ],
)
def test_bench_show_bad_recipe_is_exit_2_one_line(bench, tmp_path, old, new, needle):
    result = bench("show", write(tmp_path, MINIMAL.replace(old, new, 1)))
    assert result.code == 2 and result.out == ""
    assert result.err.strip().count("\n") == 0 and needle in result.err
