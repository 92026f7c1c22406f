"""How the model stage is cut into tasks: whole waves of task slots, each task near the images
asked for."""

from __future__ import annotations

import pytest

from fruits_pipeline.pipelines.featurization.nodes import _partitions

PER_PARTITION = {"images_per_partition": 1024, "partitions": None}


@pytest.mark.parametrize("slots", [1, 2, 3, 8])
@pytest.mark.parametrize("images", [1, 82, 2_018, 8_192, 35_520, 90_483])
def test_tasks_fill_every_slot_to_the_end_of_the_stage(images, slots):
    partitions = _partitions(images, slots, PER_PARTITION)
    assert partitions % slots == 0, "the last wave would leave slots idle"
    assert partitions >= 2 * slots
    if partitions > 2 * slots:  # more waves than the minimum: no more than needed
        assert images / partitions <= 1024 < images / (partitions - slots)


def test_partitions_set_by_hand_are_kept():
    assert _partitions(35_520, 2, {**PER_PARTITION, "partitions": 35}) == 35
