"""The codec's optional C extension (``ipc.codec._fastcodec``), loaded and configured once.

``fastcodec`` is the module, or None where it was not built (no compiler, no numpy headers)
or is not wanted (``RUNNERLIB_PURE_PYTHON``, as for the ring's ``ipc._fastring``). Its
functions are C versions of the remembered-plan paths of ``encoder``, ``decoder`` and
``ipc.fastpath``; each answers None for whatever it does not take, and the Python path runs.
"""

from __future__ import annotations

import os
from types import ModuleType

from ipc.codec.plan import Encoded, write_bytes
from ipc.codec.tensor import write_tensor
from ipc.shared import SharedBlock


def _load() -> ModuleType | None:
    if os.environ.get("RUNNERLIB_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from ipc.codec import _fastcodec  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - no compiler or numpy headers where installed
        return None
    _fastcodec.configure(Encoded, write_tensor, write_bytes, SharedBlock)
    return _fastcodec  # type: ignore[no-any-return]


fastcodec = _load()
