"""The one bounded cache type of the codec.

Everything the codec learns (tensor headers and encode plans by signature; tensor layouts,
Arrow frame bodies, stream layouts and whole-message structures by the bytes that were
checked) is a pure function of its key, so a cache may forget anything at any time: eviction
changes what a message costs, never what it decodes to.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
_D = TypeVar("_D")
_K_contra = TypeVar("_K_contra", contravariant=True)

#: the size every codec cache had before there was one type for them
DEFAULT_MAXSIZE = 512


class Lookup(Protocol[_K_contra, V]):
    """The signature of ``dict.get``."""

    @overload
    def __call__(self, key: _K_contra, default: None = None, /) -> V | None: ...

    @overload
    def __call__(self, key: _K_contra, default: V, /) -> V: ...

    @overload
    def __call__(self, key: _K_contra, default: _D, /) -> V | _D: ...


class BoundedCache(Generic[K, V]):
    """A dict of at most ``maxsize`` entries; when full, ``put`` evicts the oldest entry.

    A hit costs one plain dict lookup: ``get`` *is* the underlying dict's bound ``get`` (no
    Python frame, no lock, no bookkeeping on a hit, which is why this is not an LRU: an LRU
    writes on every hit). ``put`` takes a lock, so concurrent learners never overfill it;
    readers need none (a dict lookup is atomic under the GIL). Eviction is first in, first
    out (dicts keep insertion order): a hot working set that is a little smaller than
    ``maxsize`` survives a trickle of one-off keys, each costing at most one relearned entry.
    """

    __slots__ = ("maxsize", "get", "_data", "_lock", "__weakref__")

    def __init__(self, maxsize: int = DEFAULT_MAXSIZE) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self.maxsize = maxsize
        self._data: dict[K, V] = {}
        self._lock = threading.Lock()
        _ALL.add(self)
        #: ``get(key[, default])``: the value, or ``default`` (None) on a miss
        self.get: Lookup[K, V] = self._data.get

    def put(self, key: K, value: V) -> None:
        """Remember ``value`` for ``key``, evicting the oldest entry if the cache is full."""
        data = self._data
        with self._lock:
            if key not in data and len(data) >= self.maxsize:
                del data[next(iter(data))]
            data[key] = value

    def clear(self) -> None:
        """Forget everything (the same dict is kept, so ``get`` stays valid)."""
        with self._lock:
            self._data.clear()

    def keys(self) -> list[K]:
        """A snapshot of the keys, oldest first."""
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"<BoundedCache {len(self._data)}/{self.maxsize}>"


#: Every cache, so that a forked child gets fresh locks: a thread of the parent may have held
#: one at the fork, and that thread does not exist in the child to give it back.
_ALL: weakref.WeakSet[BoundedCache[Any, Any]] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_ALL):
        cache._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
