"""``fit.save(path)``: a fit's description and arrays, without its training data."""

from __future__ import annotations

import dataclasses

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avi.data.groups import GroupedModel
from avi.model.describe import describe_layout
from avi.saving.files import write
from avi.saving.specs import describe_object

if TYPE_CHECKING:
    from avi.result import Fit
    from avi.vi.certify import Certificate

__all__ = ["save_fit"]


def _number(value: Any) -> Any:
    """A JSON number (NaN and inf written as JavaScript does, which Python reads back)."""
    value = value.item() if hasattr(value, "item") else value
    return value if isinstance(value, (bool, int)) else float(value)


def _q_globals(fit: Fit) -> dict[str, dict[str, list[float]]]:
    """q(theta) per global site, in unconstrained space: location and scale (for reading)."""
    loc = np.asarray(fit.params.global_loc, dtype=np.float64)
    scale = np.exp(np.asarray(fit.params.global_log_scale, dtype=np.float64))
    return {
        s.name: {
            "loc": loc[s.offset : s.offset + s.size].tolist(),
            "scale": scale[s.offset : s.offset + s.size].tolist(),
        }
        for s in fit.traced.layout.globals
    }


def _certificate(certificate: Certificate | None) -> dict[str, Any] | None:
    if certificate is None:
        return None
    return {
        "blocks": [
            {k: v if k == "name" else _number(v) for k, v in b._asdict().items()}
            for b in certificate.blocks
        ],
        "draws": int(certificate.draws),
        "non_finite": int(certificate.non_finite),
    }


def _training(fit: Fit) -> dict[str, Any]:
    """Steps, stop reason, ELBO history and the convergence certificate if it was computed
    (a fit of fixed ``num_steps`` computes it on first use; saving does not add that cost)."""
    history = fit.history
    return {
        "num_steps": fit.num_steps,
        "skipped": fit.num_skipped,
        "stop_reason": fit.stop_reason,
        "wall_time": float(fit.wall_time),
        "streamed": bool(fit.streamed),
        "history": {
            "step": [int(v) for v in np.asarray(history.step)],
            "elbo": [_number(v) for v in np.asarray(history.elbo)],
            "wall_time": [float(v) for v in np.asarray(history.wall_time)],
            "backoff": [int(v) for v in np.asarray(history.backoff)],
        },
        "certificate": _certificate(fit.known_certificate),
    }


def _free_rows(fit: Fit) -> int:
    """Rows of the family's free per-datum factors (F-VI's tables, a Window's edge data)."""
    free = fit.family.free_factors(fit.params.local)
    return int(next(iter(free.values())).shape[0]) if free else 0


def save_fit(fit: Fit, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``fit`` into the folder ``path`` (see :mod:`avi.saving`).

    Returns:
        The folder.

    Raises:
        AviError: ``path`` is a file or holds a saved fit (without ``overwrite``), or a part
            of the family or a support that cannot be described.
    """
    model = fit.traced.model
    groups = None
    if isinstance(model, GroupedModel):
        model, groups = model.model, dataclasses.asdict(model.spec)
    description = {
        "model": {
            "function": f"{getattr(model, '__module__', '?')}:{getattr(model, '__qualname__', '?')}",
            **describe_layout(fit.traced),
            **({"groups": groups} if groups is not None else {}),
        },
        "family": describe_object(fit.family),
        "inputs": {
            "features": int(fit.scaling.mean.shape[0]),
            "local_rows": fit.traced.layout.num_data,
            "free_rows": _free_rows(fit),
        },
        "q_globals": _q_globals(fit),
        "training": _training(fit),
    }
    tree = {
        "params": fit.params,
        "scaling": {"mean": np.asarray(fit.scaling.mean), "std": np.asarray(fit.scaling.std)},
    }
    return write(path, description, tree, overwrite)
