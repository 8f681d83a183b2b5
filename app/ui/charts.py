"""Numbers the dashboard draws: per-column histograms of a stored table."""

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HISTOGRAM_BINS = 20
SVG_WIDTH = 240
SVG_HEIGHT = 64


@dataclass(frozen=True)
class Bar:
    """One bar of a histogram, placed in the SVG's coordinates."""

    label: str
    count: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Histogram:
    """A column's distribution: numeric bins, or the most frequent labels of a text column."""

    column: str
    kind: str
    bars: list[Bar]
    missing: int
    others: int


def _bars(labels: list[str], counts: list[int]) -> list[Bar]:
    """Bars scaled to the SVG box, the tallest filling it."""
    tallest = max(counts, default=0) or 1
    width = SVG_WIDTH / max(len(counts), 1)
    bars = []
    for index, (label, count) in enumerate(zip(labels, counts, strict=True)):
        height = SVG_HEIGHT * count / tallest
        bars.append(
            Bar(
                label=label,
                count=count,
                x=round(index * width + 0.5, 2),
                y=round(SVG_HEIGHT - height, 2),
                width=round(max(width - 1, 0.5), 2),
                height=round(height, 2),
            )
        )
    return bars


def _numeric(name: str, column: pa.ChunkedArray, bins: int) -> Histogram:
    values = column.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
    finite = values[np.isfinite(values)]
    missing = len(column) - len(finite)
    if finite.size == 0:
        return Histogram(column=name, kind="numeric", bars=[], missing=missing, others=0)
    low, high = float(finite.min()), float(finite.max())
    # A constant column gets one bar, not twenty empty ones around it.
    counts, edges = np.histogram(finite, bins=bins if high > low else 1)
    labels = [f"[{edges[i]:.4g}, {edges[i + 1]:.4g})" for i in range(len(counts))]
    return Histogram(
        column=name,
        kind="numeric",
        bars=_bars(labels, [int(count) for count in counts]),
        missing=missing,
        others=0,
    )


def _labels(name: str, column: pa.ChunkedArray, bins: int) -> Histogram:
    frequencies = pc.value_counts(column.drop_null()).to_pylist()
    frequencies.sort(key=lambda item: (-item["counts"], str(item["values"])))
    shown = frequencies[:bins]
    others = sum(item["counts"] for item in frequencies[bins:])
    return Histogram(
        column=name,
        kind="labels",
        bars=_bars([str(item["values"]) for item in shown], [item["counts"] for item in shown]),
        missing=column.null_count,
        others=others,
    )


def histograms(table: pa.Table, bins: int = HISTOGRAM_BINS) -> list[Histogram]:
    """One histogram per column: `bins` equal-width bins, or the `bins` most frequent labels."""
    result = []
    for name in table.column_names:
        column = table.column(name)
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            result.append(_numeric(name, column, bins))
        else:
            result.append(_labels(name, column, bins))
    return result
