"""What the Assembler learns online: execution time against batch size, and the arrival rate."""

from __future__ import annotations

import math


class LatencyModel:
    """Execution time of a batch as a function of its rows, learned from ``observe`` calls.

    Two estimates are kept: an EWMA per exact batch size (accurate where a size has been seen,
    even when cost is not linear, as with GPU kernels padded to tiles) and a least-squares line
    ``a + b * rows`` over all samples with exponential forgetting (for unseen sizes, and for the
    fixed cost ``a`` that joining a call saves). With no sample it predicts ``initial`` (0 by
    default: optimistic, so nothing is rejected or hurried before anything is known).
    """

    def __init__(self, *, alpha: float = 0.2, forget: float = 0.99, initial: float = 0.0,
                 max_sizes: int = 1024) -> None:
        self.alpha = alpha
        self.forget = forget
        self.initial = initial
        self.max_sizes = max_sizes
        self.samples = 0
        self._by_size: dict[int, float] = {}
        # Weighted sums for the line fit: weight, x, y, x*x, x*y.
        self._s = [0.0, 0.0, 0.0, 0.0, 0.0]
        self._line: tuple[float, float] | None = None

    def observe(self, rows: int, seconds: float) -> None:
        """Record that a batch of ``rows`` rows took ``seconds`` to execute."""
        if rows < 0 or not math.isfinite(seconds) or seconds < 0:
            return
        self.samples += 1
        old = self._by_size.get(rows)
        if old is None:
            if len(self._by_size) >= self.max_sizes:
                del self._by_size[next(iter(self._by_size))]
            self._by_size[rows] = seconds
        else:
            self._by_size[rows] = old + self.alpha * (seconds - old)
        s, f, x, y = self._s, self.forget, float(rows), seconds
        s[0] = s[0] * f + 1.0
        s[1] = s[1] * f + x
        s[2] = s[2] * f + y
        s[3] = s[3] * f + x * x
        s[4] = s[4] * f + x * y
        self._line = self._fit()

    def _fit(self) -> tuple[float, float] | None:
        """(a, b) with a, b >= 0, or None while every sample had the same size."""
        w, sx, sy, sxx, sxy = self._s
        den = w * sxx - sx * sx
        if den <= 1e-9 * max(w * sxx, 1e-300):
            return None
        b = (w * sxy - sx * sy) / den
        a = (sy - b * sx) / w
        if b < 0:  # noise: cost cannot fall with size
            return sy / w, 0.0
        if a < 0:  # refit through the origin
            return 0.0, sxy / sxx
        return a, b

    def predict(self, rows: int) -> float:
        """Expected seconds to execute a batch of ``rows`` rows."""
        seen = self._by_size.get(rows)
        if seen is not None:
            return seen
        if self._line is not None:
            a, b = self._line
            return a + b * rows
        if not self._by_size:
            return self.initial
        # One size seen: the largest cost a + b*rows with a, b >= 0 that agrees with it.
        size, seconds = next(iter(self._by_size.items()))
        return seconds * rows / size if rows > size > 0 else seconds

    def fixed_cost(self) -> float:
        """Seconds a batch costs regardless of its rows: what joining one more call saves.

        Zero until two batch sizes have been seen, since one size cannot tell fixed cost from
        per-row cost; the Assembler then never waits on the strength of a guess.
        """
        return self._line[0] if self._line is not None else 0.0


class ArrivalEstimator:
    """Whether another call is expected soon, from an EWMA of the gaps between arrivals.

    Gaps are capped at ``horizon`` so that one idle pause does not hide the next burst for
    long. ``overlap`` is an EWMA of "this call arrived while another was queued or running": a
    caller that waits for each result before sending the next never overlaps, however short its
    gaps, and waiting for it to send another call while we hold its current one would be useless.
    """

    def __init__(self, *, alpha: float = 0.2, horizon: float = 1.0, stall: float = 3.0,
                 min_overlap: float = 0.2) -> None:
        self.alpha = alpha
        self.horizon = horizon
        self.stall = stall
        self.min_overlap = min_overlap
        self.last: float | None = None
        self.gap: float | None = None
        self.overlap = 0.0

    def observe(self, arrived: float, overlapped: bool = True) -> None:
        """Record one arrival at clock time ``arrived``."""
        self.overlap += self.alpha * (float(overlapped) - self.overlap)
        if self.last is None:
            self.last = arrived
            return
        gap = min(max(arrived - self.last, 0.0), self.horizon)
        self.last = max(self.last, arrived)
        self.gap = gap if self.gap is None else self.gap + self.alpha * (gap - self.gap)

    def live_until(self) -> float | None:
        """Clock time after which the arrival stream counts as stopped; None if it is not live.

        Live means: at least one gap measured and calls do overlap. Past ``stall`` mean gaps
        without an arrival, the stream is taken to have stopped.
        """
        if self.gap is None or self.last is None or self.overlap < self.min_overlap:
            return None
        return self.last + self.stall * self.gap
