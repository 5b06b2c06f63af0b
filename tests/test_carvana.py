"""The Carvana-layout reader on tiny folders built here: good data reads back, bad data names its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.data import rle
from harness.data.carvana import car_id, open_carvana
from harness.data.dataset import (
    DataFolder,
    data_hash,
    group_ids,
    group_mask_areas,
    mask_area,
    read_image,
    read_mask,
)
from harness.errors import BenchError

# Not multiples of 32, like Carvana's 1918 width.
WIDTH, HEIGHT = 30, 20
IDS = ("aaa111_01", "aaa111_02", "bbb222_01", "bbb222_02", "bbb222_03")


def _mask_for(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A different rectangle per image, so a mix-up between ids shows."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[2 + index : 12 + index, 3 : 10 + 3 * index] = 1
    return mask


def _image_for(index: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = 40 * index + 20  # flat colours survive JPEG almost exactly
    image[..., 1] = 200
    image[..., 2] = 90
    return image


def _write_gif(path: Path, mask: np.ndarray) -> None:
    gif = Image.fromarray(mask, mode="P")
    gif.putpalette([0, 0, 0, 255, 255, 255])
    gif.save(path)


def build_carvana(root: Path, masks: str = "gif", ids: tuple[str, ...] = IDS) -> Path:
    """A Carvana-layout folder: train/ jpgs, gif masks or train_masks.csv, two test images."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    if masks == "gif":
        (root / "train_masks").mkdir()
    rows = ["img,rle_mask"]
    for index, image_id in enumerate(ids):
        Image.fromarray(_image_for(index)).save(root / "train" / f"{image_id}.jpg", quality=95)
        if masks == "gif":
            _write_gif(root / "train_masks" / f"{image_id}_mask.gif", _mask_for(index))
        rows.append(f"{image_id}.jpg,{rle.encode(_mask_for(index))}")
    if masks == "csv":
        (root / "train_masks.csv").write_text("\n".join(rows) + "\n")
    for image_id in ("ccc333_01", "ccc333_02"):
        Image.fromarray(_image_for(0)).save(root / "test" / f"{image_id}.jpg")
    (root / "metadata.csv").write_text("id,year,make,model,trim1,trim2\naaa111,2017,A,B,C,D\n")
    return root


@pytest.fixture(params=["gif", "csv"])
def dataset(request: pytest.FixtureRequest, tmp_path: Path) -> DataFolder:
    return open_carvana(build_carvana(tmp_path / "data", masks=request.param))


def test_reads_ids_sorted(dataset: DataFolder) -> None:
    assert dataset.train == IDS
    assert dataset.test == ("ccc333_01", "ccc333_02")
    assert dataset.metadata == dataset.root / "metadata.csv"
    assert group_ids(dataset) == ["aaa111", "bbb222"]
    assert "5 images" in repr(dataset)


def test_car_id_is_everything_before_the_last_underscore() -> None:
    assert car_id("00087a6bd4dc_01") == "00087a6bd4dc"
    assert car_id("my_car_16") == "my_car"
    with pytest.raises(BenchError, match="carid"):
        car_id("nounderscore")


def test_masks_and_images_read_back_at_odd_sizes(dataset: DataFolder) -> None:
    for index, image_id in enumerate(IDS):
        mask = read_mask(dataset, image_id)
        assert mask.dtype == np.uint8 and mask.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(mask, _mask_for(index))
        assert mask_area(dataset, image_id) == int(_mask_for(index).sum())
        image = read_image(dataset, image_id)
        assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
        # RGB order, not OpenCV's BGR: the red channel carries the per-image value.
        assert np.abs(image.astype(int) - _image_for(index)).max() <= 4
    assert read_image(dataset, "ccc333_01", split="test").shape == (HEIGHT, WIDTH, 3)


def test_car_mask_areas_sum_the_views(dataset: DataFolder) -> None:
    areas = [int(_mask_for(i).sum()) for i in range(len(IDS))]
    assert group_mask_areas(dataset) == {"aaa111": sum(areas[:2]), "bbb222": sum(areas[2:])}


def test_csv_masks_equal_gif_masks(tmp_path: Path) -> None:
    from_gif = open_carvana(build_carvana(tmp_path / "gif", masks="gif"))
    from_csv = open_carvana(build_carvana(tmp_path / "csv", masks="csv"))
    assert (from_gif.mask_source, from_csv.mask_source) == ("gif", "csv")
    for image_id in IDS:
        np.testing.assert_array_equal(read_mask(from_gif, image_id), read_mask(from_csv, image_id))
    assert group_mask_areas(from_gif) == group_mask_areas(from_csv)


@pytest.mark.parametrize("masks", ["gif", "csv"])
def test_data_hash_follows_the_ids_and_masks_not_the_folder_or_the_images(tmp_path: Path, masks: str) -> None:
    import shutil

    root = build_carvana(tmp_path / "data", masks=masks)
    original = data_hash(open_carvana(root))
    assert len(original) == 64
    copy = Path(shutil.copytree(root, tmp_path / "elsewhere"))
    assert data_hash(open_carvana(copy)) == original, "a copy in another folder is the same data"
    Image.fromarray(_image_for(4)).save(copy / "train" / f"{IDS[0]}.jpg", quality=95)  # another image, same label
    (copy / "test" / "ccc333_02.jpg").unlink()
    assert data_hash(open_carvana(copy)) == original, "images and test images are not the labels scored against"

    redrawn = _mask_for(0)
    redrawn[0, 0] = 1  # one pixel more car
    if masks == "gif":
        _write_gif(copy / "train_masks" / f"{IDS[0]}_mask.gif", redrawn)
    else:
        text = (copy / "train_masks.csv").read_text()
        (copy / "train_masks.csv").write_text(text.replace(rle.encode(_mask_for(0)), rle.encode(redrawn), 1))
    assert data_hash(open_carvana(copy)) != original, "one pixel of one mask is other data"
    fewer = build_carvana(tmp_path / "fewer", masks=masks, ids=IDS[:-1])
    assert data_hash(open_carvana(fewer)) != original, "one image fewer is other data"


def test_data_hash_is_strict_about_how_masks_are_stored(tmp_path: Path) -> None:
    """The same masks as gifs and as csv rows hash apart: refused as other data, never wrongly merged."""
    from_gif = open_carvana(build_carvana(tmp_path / "gif", masks="gif"))
    from_csv = open_carvana(build_carvana(tmp_path / "csv", masks="csv"))
    assert data_hash(from_gif) != data_hash(from_csv)


def test_any_nonzero_gif_value_is_car(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data")
    mask = _mask_for(0) * 255
    Image.fromarray(mask, mode="L").save(root / "train_masks" / f"{IDS[0]}_mask.gif")
    np.testing.assert_array_equal(read_mask(open_carvana(root), IDS[0]), _mask_for(0))


def test_test_folder_is_optional(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data")
    for path in (root / "test").iterdir():
        path.unlink()
    (root / "test").rmdir()
    (root / "metadata.csv").unlink()
    dataset = open_carvana(root)
    assert dataset.test == () and dataset.metadata is None


def _with_hq(root: Path) -> Path:
    """train_hq/ and test_hq/ beside train/ and test/, their images in other colours so a mix-up shows."""
    for split in ("train", "test"):
        (root / f"{split}_hq").mkdir()
        for path in (root / split).iterdir():
            Image.fromarray(255 - np.asarray(Image.open(path))).save(root / f"{split}_hq" / path.name, quality=95)
    return root


def test_hq_reads_train_hq_and_test_hq_and_the_same_masks(tmp_path: Path) -> None:
    root = _with_hq(build_carvana(tmp_path / "data"))
    standard, hq = open_carvana(root), open_carvana(root, "hq")
    assert (hq.train, hq.test, hq.sizes) == (standard.train, standard.test, standard.sizes)
    assert hq.image_path(hq.train[0]).parent == root / "train_hq" and hq.test_dir == root / "test_hq"
    for image_id in hq.train:
        plain = read_image(standard, image_id).astype(int)
        assert np.abs(read_image(hq, image_id).astype(int) - (255 - plain)).max() <= 3
        np.testing.assert_array_equal(read_mask(hq, image_id), read_mask(standard, image_id))
    test_id = hq.test[0]
    assert np.abs(read_image(hq, test_id, "test").astype(int) - (255 - read_image(standard, test_id, "test"))).max() <= 3


def test_missing_hq_folder_names_it(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data")
    message = _error(root, "hq")
    assert f"{root} has no train_hq/ folder" in message and "data.images = 'hq'" in message


def test_test_folder_without_its_hq_twin_is_an_error_not_a_run_without_test_images(tmp_path: Path) -> None:
    root = _with_hq(build_carvana(tmp_path / "data"))
    for path in (root / "test_hq").iterdir():
        path.unlink()
    (root / "test_hq").rmdir()
    assert f"{root} has test/ but no test_hq/ folder" in _error(root, "hq")


def test_hq_image_without_mask_names_the_hq_image(tmp_path: Path) -> None:
    root = _with_hq(build_carvana(tmp_path / "data"))
    Image.fromarray(_image_for(0)).save(root / "train_hq" / "zzz999_01.jpg")
    assert str(root / "train_hq" / "zzz999_01.jpg") in _error(root, "hq")


def _error(root: Path, images: str = "standard") -> str:
    with pytest.raises(BenchError) as caught:
        open_carvana(root, images)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_folder(tmp_path: Path) -> None:
    assert str(tmp_path / "nope") in _error(tmp_path / "nope")


def test_missing_train_folder(tmp_path: Path) -> None:
    assert "train/" in _error(tmp_path)


def test_no_training_images(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    assert "no training images" in _error(tmp_path)


def test_badly_named_image(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data")
    Image.fromarray(_image_for(0)).save(root / "train" / "oddname.jpg")
    assert "oddname.jpg" in _error(root)


def test_image_without_mask_names_the_image(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data")
    (root / "train_masks" / "bbb222_02_mask.gif").unlink()
    message = _error(root)
    assert "bbb222_02.jpg" in message and "no mask" in message


def test_image_without_csv_row_names_the_image(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data", masks="csv")
    csv = root / "train_masks.csv"
    csv.write_text("\n".join(line for line in csv.read_text().splitlines() if "bbb222_02" not in line))
    assert "bbb222_02.jpg" in _error(root)


def test_no_masks_at_all(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data", masks="csv")
    (root / "train_masks.csv").unlink()
    assert "train_masks.csv" in _error(root)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data")
    (root / "train" / "aaa111_02.jpg").write_bytes(b"this is not a jpeg" * 10)
    assert str(root / "train" / "aaa111_02.jpg") in _error(root)


def test_unreadable_mask_names_the_file(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data")
    (root / "train_masks" / "aaa111_02_mask.gif").write_bytes(b"GIF? no")
    assert "aaa111_02_mask.gif" in _error(root)


def test_mask_size_differs_from_image(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data")
    _write_gif(root / "train_masks" / "bbb222_01_mask.gif", _mask_for(0, height=HEIGHT + 1))
    message = _error(root)
    assert "bbb222_01_mask.gif" in message
    assert f"{WIDTH}x{HEIGHT + 1}" in message and f"{WIDTH}x{HEIGHT}" in message


def test_truncated_image_fails_at_decode_naming_the_file(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data")
    dataset = open_carvana(root)
    path = root / "test" / "ccc333_01.jpg"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(BenchError, match="ccc333_01.jpg"):
        read_image(dataset, "ccc333_01", split="test")


def test_csv_missing_column(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data", masks="csv")
    (root / "train_masks.csv").write_text("img,mask\naaa111_01.jpg,1 2\n")
    message = _error(root)
    assert "train_masks.csv" in message and "rle_mask" in message


@pytest.mark.parametrize(
    "bad_rle",
    ["1 2 3", "x y", "0 5", "1 0", f"1 {WIDTH * HEIGHT + 1}", "10 5 12 3"],
    ids=["odd", "not-numbers", "start-0", "empty-run", "past-end", "overlap"],
)
def test_malformed_csv_row_names_file_and_img(tmp_path: Path, bad_rle: str) -> None:
    root = build_carvana(tmp_path / "data", masks="csv")
    csv = root / "train_masks.csv"
    lines = csv.read_text().splitlines()
    lines[3] = f"{IDS[2]}.jpg,{bad_rle}"
    csv.write_text("\n".join(lines) + "\n")
    message = _error(root)
    assert "train_masks.csv" in message and f"img={IDS[2]}.jpg" in message


def test_empty_rle_row_is_an_empty_mask(tmp_path: Path) -> None:
    root = build_carvana(tmp_path / "data", masks="csv")
    csv = root / "train_masks.csv"
    lines = csv.read_text().splitlines()
    lines[1] = f"{IDS[0]}.jpg,"
    csv.write_text("\n".join(lines) + "\n")
    dataset = open_carvana(root)
    assert mask_area(dataset, IDS[0]) == 0
    assert not read_mask(dataset, IDS[0]).any()
