"""Recipes: a TOML file, resolved with profiles and ``--set`` overrides, validated into one object.

Resolution order: the file's own values, then each ``--profile`` in the order given (a profile is a
``[profiles.NAME]`` table of the same shape as the recipe, deep-merged: tables merge, everything else
replaces), then each ``--set key=value``. Validation happens once, on the result, and every problem
is reported as one line that names where the offending key came from (the file, a profile, or the
``--set`` flag), the key, and the close matches. Component tables (``[model]``, ``[loss]``, ...) are
checked against the registered factory's signature (see ``harness.recipe.components``).
"""

from __future__ import annotations

import copy
import difflib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import tomli_w
from pydantic import BaseModel, ConfigDict, Field

from harness.data.splits import SplitMethod
from harness.data.tiling import Tiling, tiling_problem
from harness.errors import BenchError
from harness.recipe import components
from harness.recipe.kinds import BY_NAME, RECIPE_KEYS
from harness.recipe.plugins import Plugins, UnknownComponent
from harness.recipe.tune_spec import TuneSpec

Key = tuple[str | int, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSpec(BaseModel):
    """``name`` picks a registered component; every other key is a parameter of its factory."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SourceSpec(ComponentSpec):
    name: str = "synthetic"


class DataSpec(_Strict):
    root: str | None = Field(
        None, description="A data folder, read as it is: the folders layout (images/, masks/) or Carvana's "
                          "(train/, train_masks/); unset: made by `source`."
    )
    layout: Literal["auto", "carvana", "folders"] | None = Field(
        None, description="The folder's layout; unset: auto, found from its folders (harness.data.layouts)."
    )
    mask_suffix: str | None = Field(
        None, description="Folders layout: what a mask's file name adds to its image's (masks/a_mask.png: "
                          "'_mask'); unset: the ending the mask names share."
    )
    groups: str | None = Field(
        None, description="Folders layout: a CSV with columns image,group (images of one group never straddle "
                          "folds), relative to the data folder; unset: groups.csv there if it exists."
    )
    group_pattern: str | None = Field(
        None, description="Folders layout: a regular expression on an image's id whose group named 'group' (or "
                          "first group, or whole match) is its group, e.g. '^(?P<group>[^_]+)_'."
    )
    source: SourceSpec = SourceSpec()
    images: Literal["standard", "hq"] | None = Field(
        None, description="Which JPEGs: 'standard' reads train/ and test/; 'hq' reads train_hq/ and test_hq/, the "
                          "competition's high-quality JPEGs of the same images, as both seed teams did (masks stay in "
                          "train_masks/). Unset: standard."
    )


class FoldsSpec(_Strict):
    """How the training cars are cut into folds (``harness.data.splits``, which cites the originals)."""

    k: Annotated[int, Field(ge=2)] = Field(
        5, description="Number of folds; with method 'file', the file's number of folds (a mismatch is an error)."
    )
    method: SplitMethod = Field(
        "rank_by_area", description="rank_by_area, stratified_by_area: seeded, area-balanced; "
                                    "rank_mod_k: cars ranked by mask area, fold = rank % k, no randomness "
                                    "(alexander's and vladimir's fixed folds); kfold: seeded random KFold over "
                                    "cars, as scikit-learn's (artsiom's scratch UNet); stratified_kfold: "
                                    "scikit-learn 0.19's seeded StratifiedKFold over area bins (artsiom's VGG); "
                                    "file: read from folds.file."
    )
    seed: int = Field(0, description="Seed of rank_by_area, stratified_by_area, kfold and stratified_kfold; "
                                     "ignored by rank_mod_k and file, which draw nothing.")
    view: str | None = Field(
        None, description="rank_mod_k only: rank cars by the mask area of this one view, two digits ('05': "
                          "alexander's f04a folds, vladimir's folds_csv.csv); unset: by the total over all views "
                          "(alexander's fma)."
    )
    file: str | None = Field(  # validate_default: method 'file' without a file is caught too
        None, validate_default=True,
        description="method 'file' only: a CSV with a header and columns id (car id) and fold (0..k-1), other "
                    "columns ignored, such as the originals' folds_csv.csv, f04a.csv and fma.csv; a relative path "
                    "is read from the current directory, as data.root is."
    )

    @pydantic.field_validator("view", mode="before")
    @classmethod
    def _two_digit_view(cls, view: Any, info: pydantic.ValidationInfo) -> Any:
        """``view = 5`` and ``view = "5"`` mean view ``"05"``, as the image ids spell it."""
        if view is None:
            return view
        if "method" in info.data and info.data["method"] != "rank_mod_k":
            raise ValueError(f"a view is used only by method 'rank_mod_k', not {info.data['method']!r}")
        if isinstance(view, int) and not isinstance(view, bool):
            view = str(view)
        if isinstance(view, str) and view.isdigit() and len(view) <= 2:
            view = view.zfill(2)
        if isinstance(view, str) and not re.fullmatch(r"\d\d", view):
            raise ValueError("a view is two digits, as in <carid>_05.jpg")
        return view

    @pydantic.field_validator("file")
    @classmethod
    def _file_iff_method_file(cls, file: str | None, info: pydantic.ValidationInfo) -> str | None:
        method = info.data.get("method")
        if method == "file" and file is None:
            raise ValueError("method 'file' needs folds.file, the path of a CSV with columns id,fold")
        if method is not None and method != "file" and file is not None:
            raise ValueError(f"a folds file is read only by method 'file', not {method!r}")
        return file


Size = tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]


class InputSpec(_Strict):
    # Keys added after run folders existed default to None, meaning the behaviour from before them:
    # ``Recipe.to_toml`` leaves None out, so an existing recipe keeps its TOML, its run folder's hash
    # (``--resume`` finds it) and its tuning fingerprint. Stating the default explicitly
    # (``channels = "rgb"``) behaves the same but is another recipe text, hence another hash.
    size: Size | Annotated[int, Field(ge=32)] | Literal["original", "objects"] = Field(
        "original", description="[width, height] fed to the model; one number: each image resized so its short "
                                "side is about that (torchvision's Resize(int)), both sides rounded to a multiple "
                                "of 32, whatever the data's resolution; 'original': the image's own size; "
                                "'objects': each image scaled so the median object of the training masks is about "
                                "object_size pixels across, never enlarged (small objects keep the image's own "
                                "resolution); the run chooses the scale and keeps it (choices.json)."
    )
    object_size: Annotated[int, Field(ge=8)] | None = Field(
        None, description="size = 'objects': the median object's size in pixels of the network input. Unset: 64."
    )
    crop: Size | Annotated[int, Field(ge=32)] | None = Field(
        None, description="Training on random crops of the fitted image: [width, height], or one number for a "
                          "square, multiples of 32, cut down to the image where it is smaller; validation and "
                          "prediction see whole images. Unset: whole images."
    )
    fit: Literal["pad", "resize"] = "pad"
    pad_mode: Literal["reflect", "constant"] = "constant"
    pad_side: Literal["centre", "right"] | None = Field(
        None, description="fit = 'pad': 'centre' splits the padding between the two sides (the odd pixel bottom or "
                          "right); 'right' puts all of it on the right and bottom. Unset: centre."
    )
    channels: Literal["rgb", "bgr"] | None = Field(
        None, description="The order of the colour channels fed to the model ('bgr': OpenCV's, as cv2.imread gives "
                          "them). Unset: rgb."
    )
    normalize: Literal["imagenet", "scale", "none"] = Field(
        "imagenet", description="'imagenet': x/255, then minus ImageNet's mean and over its std, per colour; 'scale': "
                                "x/255 only, in [0, 1]; 'none': no mean and std, i.e. x/255 as well (its older name, "
                                "kept so recipes that say it keep their meaning)."
    )
    mask_interpolation: Literal["nearest", "linear"] | None = Field(
        None, description="How training masks are resampled by geometric augmentations and by fit = 'resize': "
                          "'nearest' keeps them in {0, 1}; 'linear' gives soft targets in [0, 1] along the edges. "
                          "Validation always scores against the binary ground truth. Unset: each transform's own "
                          "(nearest for all built-in ones), nearest for the resize."
    )
    augment_on: Literal["image", "input"] | None = Field(
        None, description="Where training augmentation runs: 'image', on the image as read, before the fit; 'input', "
                          "on the network input, after it (artsiom's order: a rotation after the resize to 1024x1024 "
                          "stays a rotation, while one before the squash of a 1918x1280 image becomes a rotation "
                          "and a shear). Unset: image."
    )
    align_corners: bool | None = Field(
        None, description="align_corners of the bilinear upsampling of logits back to the image size (fit = "
                          "'resize'); true is PyTorch 0.2's behaviour. The input's resize (OpenCV) is not affected. "
                          "Unset: false."
    )

    @pydantic.model_validator(mode="after")
    def _check_short_side(self) -> InputSpec:
        if isinstance(self.size, int) and self.fit != "resize":
            raise ValueError(f"input.size = {self.size} (a short side) needs fit = 'resize'")
        if self.size == "objects" and self.fit != "pad":
            raise ValueError("input.size = 'objects' needs fit = 'pad' (images it does not shrink are padded)")
        if self.object_size is not None and self.size != "objects":
            raise ValueError("input.object_size is read only with size = 'objects'")
        crop = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
        if crop is not None and any(side % 32 for side in crop):
            raise ValueError(f"input.crop {crop[0]}x{crop[1]} is not a multiple of 32 on both sides")
        return self


class TrainSpec(_Strict):
    epochs: Annotated[int, Field(ge=1)]
    steps_per_epoch: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Optimizer steps per epoch, drawn from reshuffled passes over the training images; "
                          "unset: one pass. With it, a run's cost is epochs x steps_per_epoch x batch_size "
                          "images per fold, whatever the size of the data."
    )
    budget_seconds: Annotated[float, Field(gt=0)] | None = Field(
        None, description="A budget in time: seconds of optimizer steps for the whole run (all folds), the steps "
                          "per epoch following from the seconds per step timed before training, so every recipe "
                          "gets the same seconds (loading, validation and prediction come on top). The run keeps "
                          "the steps it chose (choices.json). A steps_per_epoch that is set wins over it."
    )
    batch_size: Annotated[int, Field(ge=1)]
    validate_images: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Held-out images validated after every epoch to choose the best one: a fixed sample "
                          "of each fold, drawn with the recipe's seed; the whole fold is predicted once, with the "
                          "best weights, for the out-of-fold maps. Unset: the whole fold every epoch."
    )
    accumulate: Annotated[int, Field(ge=1)] = 1
    accumulation: Literal["mean", "sum_from_first"] | None = Field(
        None, description="How `accumulate` batches make a step. 'mean': each loss divided by `accumulate`, a "
                          "step every `accumulate` batches and at the epoch's end. 'sum_from_first' (artsiom): "
                          "losses summed, a step after the first batch and then every `accumulate`, gradients "
                          "left over at the epoch's end dropped. Unset: 'mean'."
    )
    new_optimizer_every_epoch: bool | None = Field(
        None, description="Build a fresh optimizer (empty moments) at the start of every epoch (vladimir). "
                          "Unset: false."
    )
    checkpoint: Literal["best_val_dice", "best_val_loss", "last"] | None = Field(
        None, description="The epoch whose weights a fold keeps (out-of-fold maps, test predictions): "
                          "the best validation Dice, the lowest validation loss (the recipe's own loss "
                          "on the held-out images), or the last epoch. Unset: 'best_val_dice'."
    )
    grad_clip: Annotated[float, Field(gt=0)] | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    tf32: bool | None = Field(
        None, description="On a CUDA GPU that has TF32 (Ampere and later): whether fp32 convolutions and matmuls "
                          "may round their inputs to TF32's 10-bit mantissa. false: true fp32 throughout, as the "
                          "originals' 2017 GPUs computed (with precision = 'fp32': the exact reading); true: TF32 "
                          "for both. Unset: PyTorch's defaults (TF32 convolutions, fp32 matmuls). No effect on a CPU."
    )
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"


class PredictSpec(_Strict):
    """Inference uses the training geometry (``input``); TTA and averaging are chosen here."""

    tta: Literal["none", "hflip", "vflip", "hvflip", "d4"] = "none"
    average: Literal["logits", "probabilities"] = "logits"
    threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    tile: Size | None = Field(
        None, description="[width, height] of tiles predicted separately and blended; unset: no tiling."
    )
    tile_overlap: Annotated[int, Field(ge=0)] = 64
    fold_average: Literal["uint8_floor", "uint8_round"] | None = Field(
        None, description="How the folds' test maps are merged. Unset: the mean of their probabilities. "
                          "'uint8_floor': each fold's map floored to uint8 levels (p * 255), their mean floored "
                          "again (vladimir's merge_test.py, alexander's carvana_tools.py); 'uint8_round': rounded "
                          "per fold, mean rounded (artsiom's generate_sub_average.py). Out-of-fold maps come from "
                          "one model each and are not merged."
    )
    test: bool | None = Field(
        None, description="Predict the data's test images at the end of the run (unset: true). false: no test "
                          "maps, for runs that are only scored (tuning trials); bench predict applies the run later."
    )
    compile: bool | None = Field(
        None, description="Compile prediction (normalising, the models with TTA, restoring, merging, quantising) "
                           "with torch.compile, which fuses the full-size passes around the models; costs seconds "
                           "to tens of seconds once per process and input shape, and needs a C++ compiler on a "
                           "CPU. Unset: false."
    )

    @pydantic.model_validator(mode="after")
    def _check_tiling(self) -> PredictSpec:
        if self.tile is not None:
            problem = tiling_problem(self.tile, self.tile_overlap)
            if problem:
                raise ValueError(problem)
        return self

    @property
    def tiling(self) -> Tiling | None:
        return None if self.tile is None else Tiling(self.tile, self.tile_overlap)


class PseudoLabelSpec(_Strict):
    """vladimir's second stage: add confidently predicted unlabelled test images to training."""

    enabled: bool = True  # a profile cannot delete a table, so it switches the stage off instead
    uncertain: tuple[float, float] = (0.05, 0.95)
    max_uncertain_share: Annotated[float, Field(ge=0, le=1)] = 0.005
    max_images: Annotated[int, Field(ge=1)] | None = None

    @pydantic.model_validator(mode="after")
    def _check_band(self) -> PseudoLabelSpec:
        low, high = self.uncertain
        if not 0 <= low < high <= 1:
            raise ValueError(f"pseudo_label.uncertain {list(self.uncertain)}: expected [low, high] with 0 <= low < high <= 1")
        return self


class PhaseSpec(_Strict):
    """From ``start_epoch`` on, train with another optimizer (built afresh) and/or augmentation list."""

    start_epoch: Annotated[int, Field(ge=1)]
    optimizer: ComponentSpec | None = Field(
        None, description="A new optimizer, built at start_epoch; unset: the one in force carries on."
    )
    augment: list[ComponentSpec] | None = Field(
        None, description="The augmentation list from start_epoch on ([] for none); unset: unchanged."
    )

    @pydantic.model_validator(mode="after")
    def _changes_something(self) -> PhaseSpec:
        if self.optimizer is None and self.augment is None:
            raise ValueError(f"the phase starting at epoch {self.start_epoch} changes nothing: give it "
                             "an optimizer, an augment list, or both")
        return self


class Recipe(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    data: DataSpec = DataSpec()
    folds: FoldsSpec = FoldsSpec()
    input: InputSpec = InputSpec()
    model: ComponentSpec
    loss: ComponentSpec
    optimizer: ComponentSpec
    schedule: ComponentSpec = ComponentSpec(name="constant")
    augment: list[ComponentSpec] = []
    preprocess: list[ComponentSpec] = []
    callbacks: list[ComponentSpec] = []
    train: TrainSpec
    phases: list[PhaseSpec] | None = Field(
        None, description="Changes from a given epoch on, in order (harness.recipe.phases)."
    )
    predict: PredictSpec = PredictSpec()
    pseudo_label: PseudoLabelSpec | None = None
    tune: TuneSpec | None = Field(None, description="How `bench tune` searches this recipe; ignored by `bench run`.")

    @pydantic.model_validator(mode="after")
    def _drop_disabled_stage(self) -> Recipe:
        """``pseudo_label.enabled = false`` resolves to no second stage (and no table in the run's recipe)."""
        if self.pseudo_label is not None and not self.pseudo_label.enabled:
            self.pseudo_label = None
        return self

    @pydantic.model_validator(mode="after")
    def _pseudo_labels_need_test_maps(self) -> Recipe:
        if self.pseudo_label is not None and self.predict.test is False:
            raise ValueError("[pseudo_label] learns from the run's test predictions, and predict.test = false "
                             "skips them; drop one of the two")
        return self

    def to_toml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        if self.predict.tile is None:  # meaningless untiled; left out so untiled recipes keep their hash
            del data["predict"]["tile_overlap"]
        return tomli_w.dumps(data)


def load_recipe(
    path: Path, plugins: Plugins, profiles: list[str] = (), overrides: list[str] = ()
) -> Recipe:
    """Read, resolve and validate a recipe file; any problem is a one-line ``BenchError``."""
    raw = _read_toml(Path(path))
    available = raw.pop("profiles", {})
    origins = _Origins(str(path))
    if not isinstance(available, dict) or not all(isinstance(p, dict) for p in available.values()):
        raise BenchError(f"{path}: 'profiles' must hold tables, e.g. [profiles.quick]")
    for profile in profiles:
        if profile not in available:
            raise BenchError(f"{path}: no profile {profile!r}{_suggest(profile, list(available), 'profiles')}")
        raw = _merge(raw, available[profile], origins, f"profile {profile!r} of {path}")
        folds = available[profile].get("folds")
        _drop_keys_of_other_methods(raw, set(folds) if isinstance(folds, dict) else set())
    for override in overrides:
        key, value = _parse_override(override)
        set_key(raw, key, value, f"--set {'.'.join(map(str, key))}", path)
        origins.mark(key, f"--set {override}")
        _drop_keys_of_other_methods(raw, {key[1]} if len(key) == 2 and key[0] == "folds" else set())
    recipe = _validate(raw, origins)
    _check_phases(recipe, origins)
    return _check_components(recipe, plugins, origins)


# [folds] keys that one method alone reads. A profile cannot delete a key, so a profile or --set that
# changes folds.method, and does not set the key itself, drops it: a quick profile can switch a recipe
# from rank_mod_k by view 05 to rank_by_area. Given with another method in one layer, it is an error.
_METHOD_ONLY_KEYS = {"view": "rank_mod_k", "file": "file"}


def _drop_keys_of_other_methods(raw: dict, layer: set) -> None:
    """``layer``: the [folds] keys that the profile or --set just applied sets."""
    folds = raw.get("folds")
    if "method" not in layer or not isinstance(folds, dict):
        return
    for key, method in _METHOD_ONLY_KEYS.items():
        if key not in layer and folds.get("method") != method:
            folds.pop(key, None)


def recipe_from_dict(raw: dict[str, Any], plugins: Plugins, origin: str) -> Recipe:
    """Validate a recipe built in code (an ablation variant, say) as strictly as one read from a file."""
    origins = _Origins(origin)
    recipe = _validate(copy.deepcopy(raw), origins)
    _check_phases(recipe, origins)
    return _check_components(recipe, plugins, origins)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BenchError(f"{path}: recipe file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise BenchError(f"{path}: not valid TOML: {error}") from None


class _Origins:
    """Where each key's value came from, so a message can point at the file, profile or flag."""

    def __init__(self, default: str):
        self.default, self.by_key = default, {}

    def mark(self, key: Key, origin: str) -> None:
        self.by_key[tuple(key)] = origin

    def of(self, key: Key) -> str:
        for end in range(len(key), 0, -1):  # the most specific key that has an origin
            if tuple(key[:end]) in self.by_key:
                return self.by_key[tuple(key[:end])]
        return self.default


def _merge(base: dict, update: dict, origins: _Origins, origin: str, prefix: Key = ()) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value, origins, origin, prefix + (key,))
        else:
            merged[key] = copy.deepcopy(value)
            origins.mark(prefix + (key,), origin)
    return merged


def _parse_override(text: str) -> tuple[Key, Any]:
    """``a.b.0.c=VALUE``; VALUE is read as a TOML value (``3``, ``true``, ``[1, 2]``), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise BenchError(f"--set {text}: expected KEY=VALUE, e.g. --set train.epochs=3")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return parse_key(key), parsed


def parse_key(dotted: str) -> Key:
    """``augment.0.p`` -> ``("augment", 0, "p")``: list items are addressed by number."""
    return tuple(int(p) if p.isdigit() else p for p in dotted.strip().split("."))


def set_key(raw: dict, key: Key, value: Any, flag: str, path: Path | str) -> None:
    """Put ``value`` at ``key``, creating tables on the way; a problem names ``flag`` (who asked)."""
    node: Any = raw
    for depth, part in enumerate(key):
        here = ".".join(map(str, key[:depth])) or "the recipe"
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise BenchError(f"{flag}: {here} is a list of {len(node)} in {path}; address an item by number, e.g. {here}.0")
        elif not isinstance(node, dict):
            raise BenchError(f"{flag}: {here} is a value, not a table")
        elif isinstance(part, int):
            raise BenchError(f"{flag}: {here} is a table, not a list")
        if depth == len(key) - 1:
            node[part] = value
        else:
            node = node[part] if isinstance(node, list) else node.setdefault(part, {})


def _validate(raw: dict, origins: _Origins) -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except pydantic.ValidationError as error:
        # A misspelt key also leaves its real key missing; the typo is the message worth reading.
        problems = sorted(error.errors(), key=lambda problem: problem["type"] != "extra_forbidden")
        first = problems[0]
        key, inside = _split_union(first["loc"])
        if inside is None:
            described, shown = _describe(first, key), 1
        else:  # a key of several forms (input.size): one line with why each form failed
            forms = [problem for problem in problems if _split_union(problem["loc"])[0] == key]
            described, shown = _describe_forms(forms, key), len(forms)
        more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
        raise BenchError(f"{origins.of(key)}: {described}{more}") from None


def _split_union(loc: tuple) -> tuple[Key, tuple | None]:
    """``(key, place inside the value)`` of a problem in one form of a union-typed key, which pydantic
    locates by a type tag (``('input', 'size', 'constrained-int')``); ``(loc, None)`` otherwise."""
    for index, part in enumerate(loc):
        if isinstance(part, str) and _UNION_TAG.fullmatch(part):
            return tuple(loc[:index]), tuple(loc[index + 1:])
    return tuple(loc), None


# pydantic's tag of one form of a union: 'constrained-int', "literal['original']", 'tuple[...]'; never a
# key of the recipe (a dotted [tune.space] key such as 'optimizer.lr' has no '-' or '[' before its dot)
_UNION_TAG = re.compile(r"[a-z_]+(-[a-z_]+)+(\[.*\])?|[a-z_]+\[.*\]")


def _describe_forms(forms: list[dict], key: Key) -> str:
    reasons = []
    for problem in forms:
        inside = _split_union(problem["loc"])[1]
        reason = problem["msg"] + (f" (item {'.'.join(map(str, inside))})" if inside else "")
        if reason not in reasons:
            reasons.append(reason)
    value = next((p["input"] for p in forms if not _split_union(p["loc"])[1]), forms[0].get("input"))
    return f"key {'.'.join(map(str, key))!r} fits none of its forms: {'; '.join(reasons)} (got {value!r})"


def _describe(problem: dict, key: Key) -> str:
    dotted = ".".join(map(str, key))
    if problem["type"] == "extra_forbidden":
        return f"unknown key {dotted!r}{_suggest(str(key[-1]), _fields_at(key[:-1]), '.'.join(map(str, key[:-1])))}"
    if problem["type"] == "missing":
        return f"missing key {dotted!r}"
    if problem["type"] == "value_error":  # a validator's own sentence, and the value unless it is a whole table
        value = problem.get("input")
        shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
        return f"key {dotted!r}: {problem['msg'].removeprefix('Value error, ')}{shown}"
    return f"key {dotted!r}: {problem['msg']} (got {problem.get('input')!r})"


def _fields_at(parent: Key) -> list[str]:
    """Field names of the schema table at ``parent`` (list indices skipped), for close matches."""
    model: Any = Recipe
    for part in parent:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        model = next((t for t in _model_types(annotation)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _model_types(annotation: Any):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _model_types(arg)


def _suggest(word: str, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(word, known, n=3, cutoff=0.5)
    if close:
        return f" (did you mean {' or '.join(map(repr, close))}?)"
    return f" (known in {where or 'the recipe'}: {', '.join(known)})" if known else ""


def _check_phases(recipe: Recipe, origins: _Origins) -> None:
    """Phases start inside the run, in increasing order (checked here: it takes train.epochs too)."""
    previous = 0
    for index, phase in enumerate(recipe.phases or []):
        key = ("phases", index, "start_epoch")
        where = f"{origins.of(key)}: key 'phases.{index}.start_epoch' = {phase.start_epoch}"
        if phase.start_epoch >= recipe.train.epochs:
            raise BenchError(f"{where} starts past the last epoch (train.epochs = {recipe.train.epochs}; "
                             "epochs count from 0)")
        if phase.start_epoch <= previous:
            raise BenchError(f"{where}: phases start in increasing order, each after epoch {previous}")
        previous = phase.start_epoch


def _check_components(recipe: Recipe, plugins: Plugins, origins: _Origins) -> Recipe:
    """Look every component up and validate its parameters; returns the recipe with coerced params."""
    recipe = recipe.model_copy(deep=True)
    for key, kind, owner, slot in _component_slots(recipe):
        spec = owner[slot] if isinstance(owner, list) else getattr(owner, slot)
        where = ".".join(map(str, key))
        try:
            component = plugins.get(kind, spec.name)
        except UnknownComponent as unknown:
            raise BenchError(
                f"{origins.of(key + ('name',))}: unknown {kind} {spec.name!r} at key '{where}.name' ({unknown.hint()})"
            ) from None
        params, problems = components.validate_params(component, spec.params)
        if problems:
            problem = problems[0]
            full = key + tuple(problem.key.split("."))
            raise BenchError(
                f"{origins.of(full)}: key '{'.'.join(map(str, full))}' of {kind} {spec.name!r}: {problem.message}"
            )
        if BY_NAME[kind].built_at_load:  # cheap: a value the factory rejects is reported now
            components.build(component, params, where=f"{origins.of(key)}: key '{where}'")
        checked = type(spec)(name=spec.name, **params)
        if isinstance(owner, list):
            owner[slot] = checked
        else:
            setattr(owner, slot, checked)
    return recipe


def _component_slots(recipe: Recipe):
    """``(key, kind, owner, slot)`` of every component the recipe names, phases included: the spec
    is ``owner[slot]`` (a list item) or ``getattr(owner, slot)``."""
    tables = [((), recipe)] + [(("phases", i), phase) for i, phase in enumerate(recipe.phases or [])]
    for prefix, table in tables:
        for dotted, kind in RECIPE_KEYS.items():
            *parents, last = dotted.split(".")
            owner = table
            for part in parents:
                owner = getattr(owner, part, None)
            value = getattr(owner, last, None) if owner is not None else None
            if value is None:  # a phase table that does not set this kind
                continue
            key = prefix + tuple(dotted.split("."))
            if isinstance(value, list):
                for index in range(len(value)):
                    yield key + (index,), kind, value, index
            else:
                yield key, kind, owner, last
