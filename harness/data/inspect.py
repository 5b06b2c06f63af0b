"""What ``bench data check`` says of a data folder: its layout, counts, groups and image sizes, and the
masks whose values are not binary (a folders set's masks are decoded for it: opening reads headers only)."""

from __future__ import annotations

from collections import Counter

from harness.data.dataset import DataFolder, read_mask, wxh
from harness.data.folders import ONE_PER_IMAGE, UNGROUPED, problems_error
from harness.errors import BenchError


def describe_folder(dataset: DataFolder) -> list[str]:
    """Lines for the terminal; raises ``BenchError`` listing the masks that are not binary."""
    train, groups = len(dataset.train), len(set(dataset.groups.values()))
    if dataset.layout == "carvana":
        lines = [f"{dataset.root}: Carvana layout, {train} training images of {groups} cars "
                 f"(masks from {dataset.mask_source}), {len(dataset.test)} test images"]
    else:
        _check_mask_values(dataset)
        lines = [f"{dataset.root}: folders layout, {train} training images with their masks, {groups} groups "
                 f"({dataset.grouping}), {len(dataset.test)} test images"]
        if dataset.grouping == ONE_PER_IMAGE:
            lines.append(f"warning: {UNGROUPED}")
    lines.append("image sizes: " + sizes_line(list(dataset.sizes.values())))
    return lines


def sizes_line(sizes: list[tuple[int, int]]) -> str:
    """``240x160 (all 384)``, or the range, the number of distinct sizes and the most common one."""
    counts = Counter(sizes)
    if len(counts) == 1:
        return f"{wxh(sizes[0])} (all {len(sizes)})"
    common, times = counts.most_common(1)[0]
    smallest = min(sizes, key=lambda size: (size[0] * size[1], size))
    largest = max(sizes, key=lambda size: (size[0] * size[1], size))
    return (f"{len(counts)} distinct, from {wxh(smallest)} to {wxh(largest)} "
            f"(most common {wxh(common)}, {times} images)")


def _check_mask_values(dataset: DataFolder) -> None:
    problems = []
    for image_id in dataset.train:
        try:
            read_mask(dataset, image_id)  # checks the values of a folders set's mask
        except BenchError as error:
            problems.append(str(error))
    if problems:
        raise problems_error(f"data folder {dataset.root}: {len(problems)} mask(s) not binary", problems)
