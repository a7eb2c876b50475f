"""The data one optimisation step sees: a documented batch type and the helper that draws it.

A step of stochastic VI (Hoffman et al. 2013) estimates the ELBO on a batch B of the N data,
scaling the per-datum terms by N / |B| so that the estimate stays unbiased. A batch is one of

* the full data: ``Batch()`` (``index`` is None);
* rows of data held in memory: ``Batch(index)``, ``index`` of shape (B,), drawn uniformly with
  replacement by :func:`draw_batch` (O(B) work whatever N is);
* rows read on the host from a memory map: ``Batch(rows=StreamedRows(...))``, whose arrays stand
  in for the per-datum arguments (see :mod:`avi.data.stream`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax


class StreamedRows(NamedTuple):
    """A minibatch gathered on the host from memory-mapped data.

    Attributes:
        args: position -> the batch's rows of that per-datum positional argument.
        kwargs: name -> the batch's rows of that per-datum keyword argument.
        features: (B, F) standardized encoder inputs of the batch.
    """

    args: dict[int, jax.Array]
    kwargs: dict[str, jax.Array]
    features: jax.Array


class Batch(NamedTuple):
    """The data of one step.

    Attributes:
        index: (B,) int32 rows of the in-memory data, or None (full batch, or streamed rows).
        rows: the streamed rows standing in for the per-datum data, or None.
    """

    index: jax.Array | None = None
    rows: StreamedRows | None = None


def draw_batch(key: jax.Array, num_data: int, batch_size: int | None) -> Batch:
    """B indices drawn uniformly with replacement, or the full batch when ``batch_size`` is None.

    Args:
        key: PRNG key, used once.
        num_data: N.
        batch_size: B, or None for the full batch.
    """
    if batch_size is None:
        return Batch()
    return Batch(jax.random.randint(key, (batch_size,), 0, num_data))
