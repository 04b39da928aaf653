"""Join calls along ``batch_dim`` and split results back, per payload kind.

Batchable kinds: ``numpy.ndarray`` (any axis), ``pyarrow.Table``, ``pyarrow.RecordBatch``,
``pandas.DataFrame`` and ``list`` (rows, so axis 0 only). Every other argument is a "non-batch"
value: calls are joined only when those are equal, and the method receives the first call's.

pandas is never imported here: a DataFrame can only exist once its owner imported pandas, so the
type is looked up in ``sys.modules`` when needed.
"""

from __future__ import annotations

import enum
import itertools
import sys
import types
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa

Kind = Literal["ndarray", "table", "recordbatch", "dataframe", "list"]
"""A batchable kind, as ``kind_of`` names it."""
NDARRAY: Final = "ndarray"
TABLE: Final = "table"
RECORD_BATCH: Final = "recordbatch"
DATAFRAME: Final = "dataframe"
LIST: Final = "list"

Call = tuple[tuple[Any, ...], dict[str, Any]]
"""One call's ``(args, kwargs)``; the values are the caller's, of any type."""

_SUPPORTED = "numpy.ndarray, pyarrow.Table, pyarrow.RecordBatch, pandas.DataFrame or list"


def _pandas() -> types.ModuleType | None:
    return sys.modules.get("pandas")


def kind_of(value: object) -> Kind | None:
    """The batchable kind of ``value``, or None for a non-batch value."""
    if isinstance(value, np.ndarray):
        return NDARRAY
    if isinstance(value, list):
        return LIST
    if isinstance(value, pa.Table):
        return TABLE
    if isinstance(value, pa.RecordBatch):
        return RECORD_BATCH
    pd = _pandas()
    if pd is not None and isinstance(value, pd.DataFrame):
        return DATAFRAME
    return None


def _axis(kind: Kind, value: Any, batch_dim: int, name: str) -> int:
    """Normalise ``batch_dim`` for one value; only arrays have axes other than rows."""
    if kind == NDARRAY:
        ndim = value.ndim
        if not -ndim <= batch_dim < ndim:
            raise ValueError(
                f"{name}: an array of shape {value.shape} has no axis {batch_dim} to batch along"
            )
        return int(batch_dim % ndim)
    if batch_dim != 0:
        raise ValueError(f"{name}: a {kind} is batched along its rows, so batch_dim must be 0, "
                         f"not {batch_dim}")
    return 0


def _rows(kind: Kind, value: Any, axis: int) -> int:
    if kind == NDARRAY:
        return int(value.shape[axis])
    if kind in (TABLE, RECORD_BATCH):
        return int(value.num_rows)
    return len(value)


def _shape_key(kind: Kind, value: Any, axis: int) -> Hashable:
    """What two values must share to be joined: kind, dtype and the non-batch dimensions."""
    if kind == NDARRAY:
        shape = list(value.shape)
        shape[axis] = None
        return (NDARRAY, value.dtype, tuple(shape))
    if kind in (TABLE, RECORD_BATCH):
        return (kind, value.schema.remove_metadata())
    if kind == DATAFRAME:
        return (DATAFRAME, tuple(value.columns), tuple(str(t) for t in value.dtypes))
    return (LIST,)


class _Unkeyable(Exception):
    pass


def _value_key(value: object) -> Hashable:
    """A canonical hashable form of a non-batch value; equal forms mean interchangeable values.

    The type is part of the form so that 1, 1.0 and True stay apart, and floats go through
    ``float.hex`` so that NaN equals NaN and -0.0 differs from 0.0.
    """
    if isinstance(value, enum.Enum):
        return (type(value), value.name)
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return (type(value), value)
    if isinstance(value, float):
        return (type(value), value.hex())
    if isinstance(value, complex):
        return (type(value), value.real.hex(), value.imag.hex())
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        return (type(value), _value_key(value.item()))
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_value_key(v) for v in value))
    if isinstance(value, dict):
        return (type(value), tuple((_value_key(k), _value_key(v)) for k, v in value.items()))
    raise _Unkeyable


def _named(args: Sequence[Any], kwargs: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for i, value in enumerate(args):
        yield f"argument {i}", value
    for name in sorted(kwargs):
        yield f"argument {name!r}", kwargs[name]


def call_signature(args: Sequence[Any], kwargs: Mapping[str, Any],
                   batch_dim: int) -> tuple[Hashable, int]:
    """Return ``(key, rows)`` of one call.

    Calls with equal keys can be joined. ``rows`` is the call's size along ``batch_dim``; every
    batchable argument must agree on it. A non-batch value that has no canonical form (an
    arbitrary object) gives a key equal to no other, so that call always runs alone.
    """
    if not kwargs and len(args) == 1 and type(args[0]) is np.ndarray:
        # the usual call, one array: the key the walk below gives, with no walk (once per call)
        a = args[0]
        ndim = a.ndim
        if -ndim <= batch_dim < ndim:
            shape: list[int | None] = list(a.shape)
            axis = batch_dim % ndim
            size = a.shape[axis]
            shape[axis] = None
            return (batch_dim, 1, (), ((NDARRAY, a.dtype, tuple(shape)),)), size
    parts: list[Hashable] = []
    rows: int | None = None
    rows_from = ""
    for name, value in _named(args, kwargs):
        kind = kind_of(value)
        if kind is None:
            try:
                parts.append(_value_key(value))
            except _Unkeyable:
                parts.append(("unique", object()))
            continue
        axis = _axis(kind, value, batch_dim, name)
        parts.append(_shape_key(kind, value, axis))
        n = _rows(kind, value, axis)
        if rows is None:
            rows, rows_from = n, name
        elif n != rows:
            raise ValueError(f"batchable arguments disagree on the batch size along batch_dim "
                             f"{batch_dim}: {rows_from} has {rows} rows, {name} has {n}")
    if rows is None:
        raise ValueError(f"a batchable method needs at least one argument to batch ({_SUPPORTED})")
    names = tuple(sorted(kwargs))
    return (batch_dim, len(args), names, tuple(parts)), rows


def _is_default_index(frame: Any) -> bool:
    """Is ``frame`` (a DataFrame, so pandas is imported) indexed 0..n-1 by a RangeIndex?"""
    pd = sys.modules["pandas"]
    index = frame.index
    return isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1


def join(values: Sequence[Any], batch_dim: int) -> tuple[Any, list[int]]:
    """Join values of one batchable kind along ``batch_dim``; return the joined value and sizes.

    A single value is returned as is, so a batch of one never copies.
    """
    if not values:
        raise ValueError("nothing to join")
    kind = kind_of(values[0])
    if kind is None:
        raise TypeError(f"cannot join {type(values[0]).__name__}; expected {_SUPPORTED}")
    if any(kind_of(v) != kind for v in values):
        raise ValueError(f"cannot join values of different kinds: "
                         f"{sorted({type(v).__name__ for v in values})}")
    axis = _axis(kind, values[0], batch_dim, "value")
    sizes = [_rows(kind, v, axis) for v in values]
    if len(values) == 1:
        return values[0], sizes
    if kind == NDARRAY:
        joined: Any = np.concatenate(values, axis=axis)
    elif kind == TABLE:
        joined = pa.concat_tables(values)
    elif kind == RECORD_BATCH:
        joined = _concat_batches(values)
    elif kind == DATAFRAME:
        fresh = all(_is_default_index(v) for v in values)
        joined = sys.modules["pandas"].concat(values, ignore_index=fresh)
    else:
        joined = list(itertools.chain.from_iterable(values))
    return joined, sizes


def _concat_batches(batches: Sequence[pa.RecordBatch]) -> pa.RecordBatch:
    if hasattr(pa, "concat_batches"):  # pyarrow >= 19
        return pa.concat_batches(batches)
    table = pa.Table.from_batches(batches).combine_chunks()
    parts = table.to_batches()
    return parts[0] if parts else batches[0].slice(0, 0)


def _slice(kind: Kind, value: Any, axis: int, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of ``value``: views where the kind has them."""
    if kind == NDARRAY:
        return value[(slice(None),) * axis + (slice(start, stop),)]
    if kind in (TABLE, RECORD_BATCH):
        return value.slice(start, stop - start)
    if kind == DATAFRAME:
        part = value.iloc[start:stop]
        # A default index is positional, not data: each part gets its own 0..n-1, as if alone.
        return part.reset_index(drop=True) if _is_default_index(value) else part
    return value[start:stop]


def split_result(result: Any, sizes: Sequence[int], out_dim: int) -> list[Any]:
    """Split a batch result back into one part per call, in order, each with its own rows.

    Tuple results are split element-wise: each caller gets a tuple of its parts.
    """
    if isinstance(result, tuple):
        columns = [split_result(item, sizes, out_dim) for item in result]
        return [tuple(column[i] for column in columns) for i in range(len(sizes))]
    kind = kind_of(result)
    if kind is None:
        raise TypeError(f"cannot split a result of type {type(result).__name__}: a batchable "
                        f"method must return {_SUPPORTED}, or a tuple of those")
    axis = _axis(kind, result, out_dim, "result")
    total = _rows(kind, result, axis)
    if total != sum(sizes):
        raise ValueError(f"the result has {total} rows along batch_dim {out_dim} but the batch "
                         f"had {sum(sizes)} rows in {len(sizes)} calls; a batchable method must "
                         f"return one output row per input row")
    if len(sizes) == 1:
        return [result]
    bounds = list(itertools.accumulate(sizes, initial=0))
    if kind == NDARRAY and axis == 0:  # the usual result: row views, with no call each
        return [result[a:b] for a, b in itertools.pairwise(bounds)]
    return [_slice(kind, result, axis, a, b) for a, b in itertools.pairwise(bounds)]


split = split_result


def join_calls(calls: Sequence[Call],
               batch_dim: int) -> tuple[tuple[Any, ...], dict[str, Any], list[int]]:
    """Join the arguments of calls with equal signatures; return ``(args, kwargs, sizes)``."""
    if not calls:
        raise ValueError("no calls to join")
    if len(calls) > 1:
        lone = _join_lone_arrays(calls, batch_dim)
        if lone is not None:
            return lone
    sizes: list[int] = []
    first_key: Hashable | None = None
    for args, kwargs in calls:
        key, rows = call_signature(args, kwargs, batch_dim)
        if first_key is None:
            first_key = key
        elif key != first_key:
            raise ValueError("calls whose non-batch arguments, dtypes or non-batch dimensions "
                             "differ cannot be joined")
        sizes.append(rows)
    first_args, first_kwargs = calls[0]
    if len(calls) == 1:
        return tuple(first_args), dict(first_kwargs), sizes

    def joined(values: list[Any]) -> Any:
        if kind_of(values[0]) is None:
            return values[0]
        return join(values, batch_dim)[0]

    args = tuple(joined([c[0][i] for c in calls]) for i in range(len(first_args)))
    kwargs = {name: joined([c[1][name] for c in calls]) for name in first_kwargs}
    return args, kwargs, sizes


def _join_lone_arrays(calls: Sequence[Call], batch_dim: int
                      ) -> tuple[tuple[Any, ...], dict[str, Any], list[int]] | None:
    """The usual batch, joined with no call per call: one array argument each, of one dtype
    and the same other dimensions (what equal ``call_signature`` keys say). None for any
    other batch, which the general walk joins (or refuses)."""
    first_args, first_kwargs = calls[0]
    if first_kwargs or len(first_args) != 1 or type(first_args[0]) is not np.ndarray:
        return None
    first = first_args[0]
    ndim = first.ndim
    if not -ndim <= batch_dim < ndim:
        return None
    axis = batch_dim % ndim
    dtype = first.dtype
    other = first.shape[:axis] + first.shape[axis + 1:]
    values: list[np.ndarray] = []
    sizes: list[int] = []
    for args, kwargs in calls:
        if kwargs or len(args) != 1:
            return None
        a = args[0]
        if type(a) is not np.ndarray or a.dtype != dtype:
            return None
        shape = a.shape
        if shape[:axis] + shape[axis + 1:] != other:
            return None
        values.append(a)
        sizes.append(shape[axis])
    return (np.concatenate(values, axis=axis),), {}, sizes


def split_call(args: Sequence[Any], kwargs: Mapping[str, Any], batch_dim: int,
               max_rows: int) -> list[Call]:
    """Cut a call larger than ``max_rows`` into consecutive calls of at most ``max_rows`` rows.

    The worker does this before handing calls to the Assembler, runs the chunks like any other
    call, and re-joins their results with :func:`join_results`.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, not {max_rows}")
    _, rows = call_signature(args, kwargs, batch_dim)
    if rows <= max_rows:
        return [(tuple(args), dict(kwargs))]

    def chunk(value: Any, start: int, stop: int) -> Any:
        kind = kind_of(value)
        if kind is None:
            return value
        return _slice(kind, value, _axis(kind, value, batch_dim, "value"), start, stop)

    chunks: list[Call] = []
    for start in range(0, rows, max_rows):
        stop = min(start + max_rows, rows)
        chunks.append((tuple(chunk(v, start, stop) for v in args),
                       {k: chunk(v, start, stop) for k, v in kwargs.items()}))
    return chunks


def join_results(parts: Sequence[Any], out_dim: int) -> Any:
    """Join the results of a split call back into one, element-wise for tuples."""
    if not parts:
        raise ValueError("no results to join")
    if isinstance(parts[0], tuple):
        width = len(parts[0])
        if any(not isinstance(p, tuple) or len(p) != width for p in parts):
            raise ValueError("the chunks of a split call returned tuples of different lengths")
        return tuple(join_results([p[i] for p in parts], out_dim) for i in range(width))
    return join(parts, out_dim)[0]
