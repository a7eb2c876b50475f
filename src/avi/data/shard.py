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
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from avi.errors import AviError

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None, num_data: int) -> Mesh | None:
    """A mesh over the devices, or None when one device does all the work.

    With ``devices=None`` every device is used when there are several and they divide N
    evenly (else one device); an explicit list must divide N.

    Raises:
        AviError: an explicit device list that does not divide the data evenly.
    """
    chosen = list(jax.devices()) if devices is None else list(devices)
    if len(chosen) <= 1:
        return None
    if num_data % len(chosen):
        if devices is None:
            return None
        raise AviError(
            f"devices: {len(chosen)} devices do not divide N={num_data} data evenly; pass a "
            "number of devices that divides N, or drop a few data."
        )
    return Mesh(np.asarray(chosen), (DATA_AXIS,))


def shard_rows(tree: Any, num_data: int, mesh: Mesh) -> Any:
    """Place per-datum leaves (leading axis N) along the mesh, replicate the others."""
    rows = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(leaf: Any) -> Any:
        if not isinstance(leaf, jax.Array | np.ndarray):
            return leaf
        per_datum = np.ndim(leaf) >= 1 and np.shape(leaf)[0] == num_data
        return jax.device_put(leaf, rows if per_datum else replicated)

    return jax.tree_util.tree_map(place, tree)
