"""The data one optimisation step sees: a documented batch type and the helper that draws it.

A step of stochastic VI (Hoffman et al. 2013) estimates the ELBO on a batch B of the N data,
scaling the per-datum terms by N / |B| so that the estimate stays unbiased. A batch is one of

* the full data: ``Batch()`` (``index`` is None);
* rows of data held in memory: ``Batch(index)``, ``index`` of shape (B,), drawn uniformly with
  replacement by :func:`draw_batch` (O(B) work whatever N is), or (S, B / S) stratified over
  the S devices that hold the data;
* rows read on the host from a memory map: ``Batch(rows=StreamedRows(...))``, whose arrays stand
  in for the per-datum arguments (see :mod:`avi.data.stream`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


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
        index: (B,) or stratified (S, B / S) int32 rows of the in-memory data, or None (full
            batch, or streamed rows).
        rows: the streamed rows standing in for the per-datum data, or None.
    """

    index: jax.Array | None = None
    rows: StreamedRows | None = None


def draw_batch(
    key: jax.Array, num_data: int, batch_size: int | None, strata: int = 1
) -> Batch:
    """B indices drawn uniformly with replacement, or the full batch when ``batch_size`` is None.

    With ``strata = S > 1`` (the data split over S devices, :mod:`avi.data.shard`) the draw is
    stratified: B / S indices uniformly from each of the S equal blocks of rows, returned as an
    (S, B / S) array whose row s lies in block s. Every device then gathers only its own rows
    (:func:`take_rows`). The estimate (N / B) sum_b f(x_b) stays unbiased, since each block
    holds N / S data and gets B / S draws, and its variance is never larger than uniform
    sampling's (stratified sampling; Cochran 1977, ch. 5). With S = 1 it is the plain draw.

    Args:
        key: PRNG key, used once.
        num_data: N.
        batch_size: B, or None for the full batch.
        strata: S, dividing N and B.
    """
    if batch_size is None:
        return Batch()
    if strata == 1:
        return Batch(jax.random.randint(key, (batch_size,), 0, num_data))
    block = num_data // strata
    local = jax.random.randint(key, (strata, batch_size // strata), 0, block)
    return Batch(local + block * jnp.arange(strata)[:, None])


def _blocks(leaf: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``leaf`` as (S, N / S, ...) blocks and the (S, B / S) index as offsets within them."""
    strata = index.shape[0]
    block = leaf.shape[0] // strata
    blocks = leaf.reshape(strata, block, *leaf.shape[1:])
    return blocks, index - block * jnp.arange(strata)[:, None]


def take_rows(leaf: jax.Array, index: jax.Array) -> jax.Array:
    """The rows ``index`` of ``leaf`` along its leading (data) axis, as (B, ...).

    A stratified (S, B / S) index (:func:`draw_batch`) is taken block by block: a gather
    batched over the blocks, which XLA partitions along them, so each device reads its own rows
    and nothing crosses devices (a plain gather from rows split over devices is done as a masked
    gather on every device followed by an all-reduce of the batch).
    """
    if index.ndim == 1:
        return leaf[index]
    blocks, offsets = _blocks(leaf, index)
    rows = jax.vmap(lambda b, i: b[i])(blocks, offsets)
    return rows.reshape(index.size, *leaf.shape[1:])


def put_rows(leaf: jax.Array, index: jax.Array, rows: jax.Array) -> jax.Array:
    """``leaf`` with ``rows`` (B, ...) written at ``index``: the inverse of :func:`take_rows`,
    block by block for a stratified index."""
    if index.ndim == 1:
        return leaf.at[index].set(rows)
    blocks, offsets = _blocks(leaf, index)
    rows = rows.reshape(*index.shape, *leaf.shape[1:])
    return jax.vmap(lambda b, i, r: b.at[i].set(r))(blocks, offsets, rows).reshape(leaf.shape)
