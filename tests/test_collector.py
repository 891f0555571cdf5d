"""The garbage collector's settings while rows are sent, and after."""

from __future__ import annotations

import gc

import pytest

from pipeline.runner.collector import YOUNG_THRESHOLD, fewer_collections


def test_the_young_generation_is_collected_less_often_then_as_before() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with fewer_collections():
        assert gc.get_threshold() == (max(before[0], YOUNG_THRESHOLD), *before[1:])
        assert gc.get_freeze_count() > frozen  # what start-up made is out of collection
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_settings_come_back_after_an_error() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("boom")
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, frozen)


def test_cyclic_garbage_is_still_collected_within() -> None:
    class Node:
        other: object = None

    with fewer_collections():
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2
