"""Encoding: the walk of a value into an envelope and out-of-band buffers, and the fast path
that skips it for the messages that dominate traffic.

The common messages (one array; a call ``(args, kwargs)`` whose arguments are arrays and
whose kwargs are empty) have a head that depends only on the arrays' dtypes, shapes and
orders. The first message of such a signature is planned by the general walk; its head and
buffer placement are kept, and later messages of that signature reuse them (same bytes,
without the walk or msgpack).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import pyarrow as pa

from ipc.codec import arrow
from ipc.codec.cache import BoundedCache
from ipc.codec.native import fastcodec
from ipc.codec.pickled import pickle_ext
from ipc.codec.plan import Encoded, Pending, Writer, place, write_bytes
from ipc.codec.reference import copied_ext, shared_ext
from ipc.codec.tensor import TensorEntry, ndarray_ext, scalar_ext, write_tensor
from ipc.codec.wire import (
    EXT_BYTES,
    EXT_DATAFRAME,
    EXT_RECORD_BATCH,
    EXT_TABLE,
    EXT_TUPLE,
    INT_MIN,
    UINT_MAX,
    Ext,
    Order,
    encode_msgpack,
    pack_u32,
)
from ipc.errors import EncodeError
from ipc.shared import block_of

BYTES_OOB_MIN = 4096  # bytes at least this long travel as an out-of-band buffer
SUPPORTED = (
    "None, bool, int (-2**63 .. 2**64-1), float, str, bytes, list, tuple, dict with str/int "
    "keys, numpy.ndarray (bool, int8..int64, uint8..uint64, float16/32/64, complex64/128), "
    "numpy scalars of those dtypes, pyarrow.Table, pyarrow.RecordBatch, pandas.DataFrame"
)
_SCALARS = frozenset((str, float, bool, type(None)))


class _Unsupported(Exception):
    """Raised inside the walk; collects the path while it unwinds (free on the happy path)."""

    def __init__(self, tp: type, reason: str = "", cause: BaseException | None = None):
        super().__init__()
        self.tp = tp
        self.reason = reason
        self.cause = cause
        self.parts: list[str] = []


class _Builder:
    """One encode: walks the value, collects out-of-band buffers."""

    __slots__ = ("bufs", "allow_pickle", "shared", "share_above", "share_limit")

    def __init__(self, allow_pickle: bool, share_above: int = 0, share_limit: int = 0) -> None:
        self.bufs: list[Pending] = []
        self.allow_pickle = allow_pickle
        self.shared: list[Any] = []  # blocks whose count a reference took (given back on failure)
        self.share_above = share_above
        self.share_limit = share_limit

    def add(self, length: int, writer: Writer, payload: Any) -> int:
        self.bufs.append((length, writer, payload))
        return len(self.bufs) - 1

    def walk(self, v: Any) -> Any:
        t = type(v)
        if t in _SCALARS:
            return v
        if t is int:
            if INT_MIN <= v <= UINT_MAX:
                return v
            return self.other(v, "int out of 64-bit range")
        if t is np.ndarray:
            if v.base is not None:
                ref = shared_ext(v)
                if ref is not None:
                    self.shared.append(ref[1])
                    return ref[0]
            if self.share_above and v.nbytes >= self.share_above:
                ref = copied_ext(v, self.share_limit)
                if ref is not None:
                    self.shared.append(ref[1])
                    return ref[0]
            ext = ndarray_ext(self.add, v)
            return ext if ext is not None else self.other(v, f"ndarray of dtype {v.dtype}")
        if t is tuple:
            return Ext(EXT_TUPLE, encode_msgpack(self.seq(v)))
        if t is list:
            return self.seq(v)
        if t is dict:
            return self.mapping(v)
        if t is bytes:
            if len(v) >= BYTES_OOB_MIN:
                return Ext(EXT_BYTES, pack_u32(self.add(len(v), write_bytes, v)))
            return v
        if t is pa.Table or t is pa.RecordBatch:
            return arrow.stream_ext(self.add, v, EXT_TABLE if t is pa.Table else EXT_RECORD_BATCH)
        if isinstance(v, np.generic):
            ext = scalar_ext(v)
            if ext is not None:
                return ext
            return self.other(v)
        if t.__name__ == "DataFrame" and t.__module__.startswith("pandas"):
            try:
                table = arrow.from_pandas(v)
            except arrow.Unconvertible as e:
                return self.other(v, e.reason)
            return arrow.stream_ext(self.add, table, EXT_DATAFRAME)
        return self.other(v)

    def seq(self, v: list[Any] | tuple[Any, ...]) -> list[Any]:
        out = None
        walk = self.walk
        for i, x in enumerate(v):
            tx = type(x)
            if tx in _SCALARS or (tx is int and INT_MIN <= x <= UINT_MAX):
                if out is not None:
                    out.append(x)
                continue
            try:
                y = walk(x)
            except _Unsupported as e:
                e.parts.append(f"[{i}]")
                raise
            if out is None:
                if y is x:
                    continue
                out = list(v[:i])
            out.append(y)
        if out is None:
            return v if type(v) is list else list(v)
        return out

    def mapping(self, v: dict[Any, Any]) -> dict[Any, Any] | Ext:
        for k in v:
            tk = type(k)
            if tk is not str and tk is not int or (tk is int and not INT_MIN <= k <= UINT_MAX):
                return self.other(v, f"dict key of type {tk.__qualname__}")
        out = {}
        walk = self.walk
        for k, x in v.items():
            if type(x) in _SCALARS:
                out[k] = x
                continue
            try:
                out[k] = walk(x)
            except _Unsupported as e:
                e.parts.append(f"[{k!r}]")
                raise
        return out

    def other(self, v: object, reason: str = "") -> Ext:
        if not self.allow_pickle:
            raise _Unsupported(type(v), reason)
        try:
            return pickle_ext(self.add, v)
        except Exception as e:  # noqa: BLE001 - any pickling failure is an encode failure
            raise _Unsupported(type(v), "pickling failed", e) from e


def general_plan(value: Any, allow_pickle: bool, share_above: int = 0, share_limit: int = 0
                 ) -> Encoded:
    """The plan of any message, by the walk (no remembered plan involved)."""
    b = _Builder(allow_pickle, share_above, share_limit)
    try:
        tree = b.walk(value)
    except BaseException as e:
        for block in b.shared:
            block.unshare()
        if not isinstance(e, _Unsupported):
            raise
        tp = f"{e.tp.__module__}.{e.tp.__qualname__}"
        if tp.startswith("builtins."):
            tp = tp[9:]
        where = "value" + "".join(reversed(e.parts))
        if e.cause is not None:
            msg = f"cannot encode {tp} at {where}: {e.reason}: {e.cause!r}"
            raise EncodeError(msg) from e.cause
        why = f" ({e.reason})" if e.reason else ""
        raise EncodeError(
            f"cannot encode {tp}{why} at {where} without pickle (allow_pickle=False); "
            f"supported: {SUPPORTED}"
        ) from None
    return place(encode_msgpack(tree), b.bufs)


# ---------------------------------------------------------------------------- the fast path

_ArraySig = tuple[np.dtype[Any], tuple[int, ...], Order]
#: one array: (its signature,); a call: (None, the signature of each argument...)
_Signature = tuple[_ArraySig | None, ...]
#: (nbytes, head, ((offset, length, tensor header entry), ...))
_FastPlan = tuple[int, bytes, tuple[tuple[int, int, TensorEntry], ...]]


class _Seen(enum.Enum):
    UNSEEN = 0


_UNSEEN: Final = _Seen.UNSEEN
_FAST_MAX_ARGS = 8

# signature -> its plan, or None for a signature that is not all tensors (then the walk plans
# it, without trying to remember it)
plans: BoundedCache[_Signature, _FastPlan | None] = BoundedCache()
_plan_of = plans.get  # bound once: a hit is one dict lookup, no attribute
_plans_dict = plans._data  # the dict itself: clear() keeps it
#: ``planned(value, share_above, plans)``: a hit of the fast path below in one C call (the
#: signature made, looked up, the plan built), or None; tests set it to None for the Python path
planned: Callable[[Any, int, dict[Any, Any]], Encoded | None] | None = (
    None if fastcodec is None else fastcodec.planned)


def _array_sig(a: np.ndarray) -> _ArraySig:
    if a.ndim > 1 and not a.flags.c_contiguous and a.flags.f_contiguous:
        return (a.dtype, a.shape, "F")
    return (a.dtype, a.shape, "C")


def _by_reference(a: np.ndarray, share_above: int) -> bool:
    """A shared array's view, or an array that becomes one: a reference, not a plan."""
    return (a.base is not None and block_of(a) is not None
            or bool(share_above) and a.nbytes >= share_above)


_ndarray = np.ndarray


def _fast_signature(value: Any, share_above: int) -> _Signature | None:
    """The signature of a call whose arguments are all arrays (``encode`` does a lone
    array's itself), or None."""
    if type(value) is tuple and len(value) == 2:
        args, kwargs = value
        if (type(args) is tuple and type(kwargs) is dict and not kwargs
                and 0 < len(args) <= _FAST_MAX_ARGS):
            sig: list[_ArraySig | None] = [None]
            for a in args:
                if type(a) is not _ndarray or _by_reference(a, share_above):
                    return None
                sig.append(_array_sig(a))
            return tuple(sig)
    return None


def _remember_plan(sig: _Signature, plan: Encoded) -> None:
    bufs = plan._bufs
    hit: _FastPlan | None
    if len(bufs) != len(sig) - (sig[0] is None) or any(b[2] is not write_tensor for b in bufs):
        hit = None  # not all tensors (a dtype outside the tensor set, say): always the walk
    else:
        placed = tuple((off, length, payload[1]) for off, length, _w, payload in bufs)
        hit = (plan.nbytes, plan._head, placed)
    plans.put(sig, hit)


def encode(value: Any, *, allow_pickle: bool = True, share_above: int = 0, share_limit: int = 0
           ) -> Encoded:
    """Plan the message for ``value``; EncodeError (a TypeError) names what is unsupported.

    Arrays viewing a shared array (ipc.shared) travel as references. With ``share_above``,
    so does every other array of at least that many bytes: copied once into a shared segment
    (TooLarge past ``share_limit`` bytes), it then goes back and forth with no copy."""
    fast = planned
    if fast is not None:
        plan = fast(value, share_above, _plans_dict)
        if plan is not None:
            return plan
    sig: _Signature | None
    if type(value) is _ndarray:  # one array (an answer, mostly), with two calls fewer
        sig = None if _by_reference(value, share_above) else (_array_sig(value),)
    else:
        sig = _fast_signature(value, share_above)
    if sig is None:
        return general_plan(value, allow_pickle, share_above, share_limit)
    hit = _plan_of(sig, _UNSEEN)
    if hit is None:  # a signature the walk must always plan
        return general_plan(value, allow_pickle)
    if hit is _UNSEEN:
        plan = general_plan(value, allow_pickle)
        _remember_plan(sig, plan)
        return plan
    nbytes, head, placed = hit
    if len(placed) == 1:  # one array, as an answer or as a call's only argument
        off, length, entry = placed[0]
        return Encoded(nbytes, head, [(off, length, write_tensor,
                                       (value if sig[0] is not None else value[0][0], entry))])
    return Encoded(
        nbytes,
        head,
        [(off, length, write_tensor, (a, entry))
         for (off, length, entry), a in zip(placed, value[0], strict=True)],
    )
