"""Adaptive batching: which calls run together and when, and how to join and split them.

Standalone: imports numpy and pyarrow only (pandas when a DataFrame is passed), and knows
nothing of processes or shared memory. The worker feeds it calls and runs the batches it hands
out; see ``assembler`` for the loop and the dispatch rule.
"""

from .assembler import Assembler, PendingCall
from .errors import BatchingError, Overloaded
from .execute import Outcome, run_batch, run_batch_async
from .joining import (
    call_signature,
    join,
    join_calls,
    join_results,
    kind_of,
    split,
    split_call,
    split_result,
)
from .latency import ArrivalEstimator, LatencyModel

__all__ = [
    "ArrivalEstimator",
    "Assembler",
    "BatchingError",
    "LatencyModel",
    "Outcome",
    "Overloaded",
    "PendingCall",
    "call_signature",
    "join",
    "join_calls",
    "join_results",
    "kind_of",
    "run_batch",
    "run_batch_async",
    "split",
    "split_call",
    "split_result",
]
