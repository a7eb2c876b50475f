"""Data parallelism over devices with ``jax.sharding``.

Arrays whose leading axis is the data axis (per-datum arguments, encoder features, F-VI's
per-datum tables and their optimiser moments) are split along it over a one-dimensional mesh;
everything else (globals, encoder weights) is replicated. The compiled step then runs as a
single SPMD program: each device evaluates the ELBO terms of its own data and XLA inserts the
all-reduce of the sums and gradients. Multi-host runs work the same way once
``jax.distributed.initialize()`` has been called on every host: ``jax.devices()`` then lists
the devices of all hosts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from avi.errors import AviError

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None, num_data: int) -> Mesh | None:
    """A mesh over the devices, or None when one device does all the work.

    With ``devices=None`` every device is used when there are several and they divide N
    evenly (else one device); an explicit list must divide N.

    With ``jax.distributed`` initialised, ``jax.devices()`` lists every process's devices:
    the data are split over all of them and must divide evenly.

    Raises:
        AviError: devices (an explicit list, or those of several processes) that do not divide
            the data evenly.
    """
    chosen = list(jax.devices()) if devices is None else list(devices)
    if len(chosen) <= 1:
        return None
    if num_data % len(chosen):
        if devices is None and jax.process_count() == 1:
            return None
        raise AviError(
            f"devices: {len(chosen)} devices do not divide N={num_data} data evenly; pass a "
            "number of devices that divides N, or drop a few data."
        )
    return Mesh(np.asarray(chosen), (DATA_AXIS,))


def num_strata(mesh: Mesh | None, batch_size: int | None) -> int:
    """The number of blocks minibatches are stratified over: one per device of the mesh
    (:func:`avi.data.batch.draw_batch`), 1 without a mesh or in full-batch mode.

    Raises:
        AviError: a batch size that the devices do not divide.
    """
    if mesh is None or batch_size is None:
        return 1
    count = mesh.devices.size
    if batch_size % count:
        raise AviError(
            f"batch_size={batch_size}: each of the {count} devices draws an equal share of every "
            f"minibatch from its own rows; give a batch size that {count} divides (e.g. "
            f"{count * max(1, round(batch_size / count))})."
        )
    return count


def shard_rows(tree: Any, num_data: int, mesh: Mesh) -> Any:
    """Place per-datum leaves (leading axis N) along the mesh, replicate the others.

    Across several processes every process converts and sends only its devices' rows of a
    leaf (``jax.make_array_from_callback``; NumPy leaves are read only there), and no
    collective checks that the processes passed equal values: they run the same script on the
    same arguments. A leaf already placed as asked is kept.
    """
    rows = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    several = spans_processes(mesh)

    def place(leaf: Any) -> Any:
        if not isinstance(leaf, jax.Array | np.ndarray):
            return leaf
        per_datum = np.ndim(leaf) >= 1 and np.shape(leaf)[0] == num_data
        sharding = rows if per_datum else replicated
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        if not several:
            return jax.device_put(leaf, sharding)
        dtype = jax.dtypes.canonicalize_dtype(leaf.dtype)
        return jax.make_array_from_callback(
            np.shape(leaf), sharding, lambda index: np.asarray(leaf[index], dtype=dtype)
        )

    return jax.tree_util.tree_map(place, tree)


def process_rows(tree: Any, num_data: int, mesh: Mesh) -> Any:
    """Every leaf of ``tree``, this process's rows of per-datum arrays of N rows, as its part
    of the global array split along the mesh (``jax.make_array_from_process_local_data``)."""
    rows = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.tree_util.tree_map(
        lambda leaf: jax.make_array_from_process_local_data(
            rows, np.asarray(leaf), (num_data, *np.shape(leaf)[1:])
        ),
        tree,
    )


def spans_processes(mesh: Mesh | None) -> bool:
    """Whether the mesh holds devices of other processes (``jax.distributed``)."""
    return mesh is not None and any(
        d.process_index != jax.process_index() for d in mesh.devices.flat
    )


def gathered(tree: Any) -> Any:
    """``tree`` with every array that spans other processes' devices gathered into this
    process (``multihost_utils.process_allgather``): after a fit over several processes each
    holds the whole result, the same everywhere. A collective: every process calls it on the
    same tree.
    """

    def local(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return jnp.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return leaf

    return jax.tree_util.tree_map(local, tree)


def summed_over_processes(value: np.ndarray, several: bool) -> np.ndarray:
    """``value`` added over the processes (``several``; a collective: every process calls it
    with the same shape), or ``value`` itself within one process."""
    if not several:
        return value
    return np.sum(multihost_utils.process_allgather(np.asarray(value)), axis=0)


def owned_part(array: jax.Array) -> np.ndarray:
    """The entries of ``array`` that this process owns, as a host array (m, d_local) of its
    leading axis (which must not be split) by the rest flattened; the whole array within one
    process. Every entry is owned by exactly one process (the lowest-numbered device holding
    it), so sums over entries, e.g. inner products of rows, add up across processes
    (:func:`summed_over_processes`) to the whole array's, and no process holds more than its
    devices' share."""
    if array.is_fully_addressable:
        whole = np.asarray(array)
        return whole.reshape(whole.shape[0], -1)
    block = lambda index: tuple((s.start, s.stop) for s in index)
    owners: dict[tuple, jax.Device] = {}
    for device, index in array.sharding.devices_indices_map(array.shape).items():
        if block(index) not in owners or device.id < owners[block(index)].id:
            owners[block(index)] = device
    pieces = sorted(
        (block(shard.index), np.asarray(shard.data))
        for shard in array.addressable_shards
        if owners[block(shard.index)] == shard.device
    )
    if any(piece.shape[0] != array.shape[0] for _, piece in pieces):
        raise ValueError("owned_part: the leading axis of the array is split over devices")
    flat = [piece.reshape(piece.shape[0], -1) for _, piece in pieces]
    return np.concatenate(flat, axis=1) if flat else np.zeros((array.shape[0], 0), array.dtype)


def host_arrays(tree: Any) -> Any:
    """``tree`` as NumPy arrays on this host, arrays split over other processes' devices
    gathered first (a collective when any is: every process calls it on the same tree)."""

    def host(leaf: Any) -> np.ndarray:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.is_fully_replicated:
                return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree_util.tree_map(host, tree)
