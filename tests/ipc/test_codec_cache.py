"""BoundedCache: the one cache type behind everything the codec learns."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from ipc.codec import arrow, decoder, encoder, tensor
from ipc.codec.cache import DEFAULT_MAXSIZE, BoundedCache


def test_get_put_and_default():
    c: BoundedCache[str, int] = BoundedCache(4)
    assert c.get("a") is None
    sentinel = object()
    assert c.get("a", sentinel) is sentinel
    c.put("a", 1)
    assert c.get("a") == 1 and c.get("a", sentinel) == 1
    assert "a" in c and "b" not in c and len(c) == 1


def test_none_is_a_value_that_a_default_tells_apart():
    c: BoundedCache[str, int | None] = BoundedCache(2)
    c.put("never", None)
    assert c.get("never", "unseen") is None
    assert c.get("other", "unseen") == "unseen"


def test_full_cache_evicts_the_oldest_entry():
    c: BoundedCache[int, int] = BoundedCache(3)
    for k in range(3):
        c.put(k, k * 10)
    c.get(0)  # a hit changes nothing (no LRU bookkeeping on the hit path)
    c.put(3, 30)
    assert len(c) == 3 and c.keys() == [1, 2, 3]
    assert c.get(0) is None and c.get(3) == 30
    for k in range(100, 200):
        c.put(k, k)
        assert len(c) <= 3
    assert c.keys() == [197, 198, 199]


def test_putting_a_present_key_replaces_without_evicting():
    c: BoundedCache[str, int] = BoundedCache(2)
    c.put("a", 1)
    c.put("b", 2)
    c.put("a", 3)
    assert c.keys() == ["a", "b"] and c.get("a") == 3 and c.get("b") == 2


def test_clear_keeps_get_bound_to_the_live_dict():
    c: BoundedCache[str, int] = BoundedCache(2)
    get = c.get
    c.put("a", 1)
    c.clear()
    assert len(c) == 0 and get("a") is None
    c.put("a", 2)
    assert get("a") == 2  # the bound lookup sees what is put after a clear


def test_iteration_is_a_snapshot():
    c: BoundedCache[int, int] = BoundedCache(8)
    for k in range(4):
        c.put(k, k)
    for k in c:  # putting while iterating is safe
        c.put(k + 100, k)
    assert len(c) == 8


def test_maxsize_must_be_positive():
    with pytest.raises(ValueError):
        BoundedCache(0)
    assert BoundedCache().maxsize == DEFAULT_MAXSIZE
    assert "0/7" in repr(BoundedCache(7))


def test_concurrent_puts_never_overfill():
    c: BoundedCache[tuple[int, int], int] = BoundedCache(50)

    def fill(t: int) -> None:
        for i in range(2000):
            c.put((t, i), i)
            assert len(c) <= 50
            c.get((t, i - 1))

    threads = [threading.Thread(target=fill, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(c) == 50


def test_every_codec_cache_is_one_bounded_cache():
    caches = [tensor.headers, tensor.layouts, encoder.plans, arrow.frame_bodies,
              arrow.stream_layouts, decoder.fast_decodes]
    assert all(type(c) is BoundedCache for c in caches)
    assert len({id(c) for c in caches}) == 6


def test_codec_caches_stay_bounded_under_many_signatures():
    """Arrays of ever new shapes: plans, headers, layouts and message shapes each stay at
    their bound, and what fell out is relearned correctly."""
    caches: list[BoundedCache[Any, Any]] = [
        tensor.headers, tensor.layouts, encoder.plans, decoder.fast_decodes]
    for n in range(1, DEFAULT_MAXSIZE + 40):
        a = np.full(n, n, np.int16)
        out = decoder.decode(encoder.encode(a).to_bytes())
        assert out.shape == (n,) and out[0] == n
        assert all(len(c) <= c.maxsize for c in caches)
    assert all(len(c) == c.maxsize for c in caches)
    a = np.full(1, 7, np.int16)  # its entries were evicted long ago
    assert decoder.decode(encoder.encode(a).to_bytes())[0] == 7
