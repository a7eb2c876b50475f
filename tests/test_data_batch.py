"""Minibatches stratified over the devices that hold the data (:mod:`avi.data.batch`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from avi.data.batch import draw_batch, put_rows, take_rows


def test_each_block_of_the_index_lies_in_its_own_rows():
    index = draw_batch(jax.random.PRNGKey(0), 1000, 100, strata=4).index
    assert index.shape == (4, 25)
    for s in range(4):
        assert np.all((index[s] >= 250 * s) & (index[s] < 250 * (s + 1)))
    assert draw_batch(jax.random.PRNGKey(0), 1000, 100).index.shape == (100,)


def test_taking_and_putting_blocks_equals_plain_indexing():
    leaf = jnp.arange(1000 * 3.0).reshape(1000, 3)
    index = draw_batch(jax.random.PRNGKey(1), 1000, 100, strata=4).index
    flat = index.reshape(-1)
    np.testing.assert_array_equal(take_rows(leaf, index), leaf[flat])
    rows = -jnp.ones((100, 3))
    np.testing.assert_array_equal(put_rows(leaf, index, rows), leaf.at[flat].set(rows))


def test_the_stratified_estimate_is_unbiased_and_no_noisier():
    """(N / B) sum_b f(x_b) over 4,000 draws: its mean is sum_n f(x_n) within 4 standard
    errors, stratified or not, and for an f that differs between blocks the stratified variance
    is smaller (it removes the between-block part; Cochran 1977, eq. 5.6)."""
    f = jnp.linspace(0.0, 1.0, 1000) ** 2
    keys = jax.random.split(jax.random.PRNGKey(2), 4000)

    def estimates(strata: int) -> np.ndarray:
        take = lambda k: 10.0 * jnp.sum(take_rows(f, draw_batch(k, 1000, 100, strata).index))
        return np.asarray(jax.vmap(take)(keys))

    exact = float(jnp.sum(f))
    plain, stratified = estimates(1), estimates(4)
    for values in (plain, stratified):
        assert abs(values.mean() - exact) < 4 * values.std() / np.sqrt(values.size)
    assert stratified.var() < 0.5 * plain.var()
