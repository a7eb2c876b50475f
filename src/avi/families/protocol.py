"""The family protocol: where each datum's factor parameters lambda_n come from.

A *family* of local factors q(z_n | lambda_n) (paper, section 2) is a :class:`Factor` (what
lambda means, :mod:`avi.families.factor`) and a rule that produces lambda_n:

* :class:`avi.Factorized` (F-VI): free parameters per datum, kept in per-datum tables
  (``table_keys``) that minibatch steps update row by row;
* :class:`avi.Constant`: one lambda shared by every datum;
* :class:`avi.Amortized` (A-VI): lambda_n = f_phi(x_n), one encoder for all data (Prop. 2.1:
  a subset of F-VI), with free factors for data an input Window cannot serve (Remark 3.7).

Any object with the attributes and methods of :class:`LocalFamily` is a family: the ELBO
(:mod:`avi.vi.elbo`), the step, the certificate and :class:`avi.Fit` use nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import equinox as eqx
import jax
import numpy as np

from avi.errors import FamilyError
from avi.families.factor import Factor


class LocalData(NamedTuple):
    """Per-datum inputs of a family, derived once from the data.

    Attributes:
        features: (N, F) encoder inputs (standardized, windowed); (N, 0) when unused.
        free_slot: (N,) index into the free per-datum factors of data that get their own
            factor (Window edges), -1 for data served otherwise.
    """

    features: jax.Array
    free_slot: jax.Array


@runtime_checkable
class LocalFamily(Protocol):
    """The contract of a variational family of the local latents.

    Attributes:
        name: a short label ("factorized", "amortized", ...).
        factor: the factor every datum gets.
        infers_new_data: whether :meth:`local_params` serves data it was not fitted on.
        table_keys: keys of the per-datum tables in the local parameters (rows indexed by
            datum; a minibatch step reads and updates only the batch's rows).
    """

    name: str
    factor: Factor
    infers_new_data: bool
    table_keys: tuple[str, ...]

    def prepare(self, features: np.ndarray) -> LocalData:
        """The family's per-datum inputs from the standardized (N, F) features."""
        ...

    def init(
        self, key: jax.Array, data: LocalData, local_dim: int, global_dim: int = 0
    ) -> dict[str, Any]:
        """The starting local parameters (every datum's factor at ``factor.init``)."""
        ...

    def local_params(
        self,
        params: Mapping[str, Any],
        data: LocalData,
        index: jax.Array | None,
        theta: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """lambda of the data ``index`` (None: all), each part with leading axis (B,); given
        the draw ``theta`` (D_g,) of the unconstrained globals for a family whose factors
        depend on it (``given_globals``), which others ignore."""
        ...

    def free_factors(self, params: Mapping[str, Any]) -> dict[str, jax.Array]:
        """The parts of the local parameters (or of their gradient, same structure) that are
        free per-row factor parameters, keyed by the factor's part names: the convergence
        certificate measures them in the factor's Fisher metric. Empty when there are none."""
        ...


Family = LocalFamily


def given_globals(family: LocalFamily) -> bool:
    """Whether the family's local factors depend on the globals' draw, q(z_n | theta, x_n)."""
    return bool(getattr(family, "given_globals", False))


def factors_given(
    family: LocalFamily,
    params: Mapping[str, Any],
    data: LocalData,
    index: jax.Array | None,
    thetas: jax.Array,
) -> dict[str, jax.Array]:
    """lambda of the data ``index`` at each draw of ``thetas`` (S, D_g), each part with
    leading axes (S, B) for a family given the globals; (B,) for others (they ignore it)."""
    if not given_globals(family):
        return family.local_params(params, data, index)
    return jax.vmap(lambda t: family.local_params(params, data, index, theta=t))(thetas)


def count_parameters(params: Any) -> int:
    """Number of scalar variational parameters in a pytree."""
    return sum(
        int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(eqx.filter(params, eqx.is_array))
    )


def check_factor(factor: Any, owner: str) -> Factor:
    """``factor`` if it follows the :class:`Factor` protocol.

    Raises:
        FamilyError: it does not.
    """
    if not isinstance(factor, Factor):
        raise FamilyError(
            f"{owner}(factor={factor!r}) is not a factor: give avi.Diagonal(), or an object with "
            "`parameters`, `init(dim)`, `distribution(params)`, `fisher(params)` and "
            "`marginal(params, piece, arrange)` (see avi.families.factor.Factor)."
        )
    return factor
