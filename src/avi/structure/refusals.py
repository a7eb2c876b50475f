"""Refusals the fit must make on a model's structure: minibatches of a model that summarises
all of its data, and an encoder with no input.

A model that computes a statistic S(x) of all its data (mean, sd, sum) inside itself couples
every datum to the others through S. On a minibatch B the model computes S(x_B) instead, so the
minibatch ELBO (N/|B|) sum_{n in B} ... is no longer an unbiased estimate of the full ELBO: the
fit would optimise another model. An encoder with zero input features maps every datum to the
same factor, whatever the data, which a "converged" fit would hide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from avi.errors import ModelError
from avi.model import Model
from avi.structure.report import StructureReport
from avi.structure.verdict import check


def minibatch_refusal(report: StructureReport) -> str | None:
    """Why the model must not be fitted on minibatches, or None when it may be.

    Args:
        report: ``avi.check``'s report on the model and its full data.
    """
    if not report.summaries:
        return None
    labels = ", ".join(report.summaries)
    return (
        f"The model computes a summary of all of {labels} (such as its mean or sd) inside "
        "itself: on a minibatch it would compute the summary of the minibatch instead, so the "
        "minibatch ELBO estimates another model's. Compute the summary once on the full data "
        "and pass it to the model as an argument (e.g. model(x, x_mean=x.mean(), "
        "x_sd=x.std())), or fit without batch_size."
    )


def refuse_minibatches(
    model: Model,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    plate: str | None = None,
    report: StructureReport | None = None,
) -> None:
    """Raise when ``model`` must not be fitted on minibatches (see :func:`minibatch_refusal`).

    Args:
        model: the NumPyro model.
        args: its positional arguments (the full data).
        kwargs: its keyword arguments.
        plate: name of the data plate, if the automatic choice must be overridden.
        report: ``avi.check``'s report if already computed (saves the analysis).

    Raises:
        ModelError: the model summarises its data; the message names the data and the fix.
    """
    report = report if report is not None else check(model, *args, plate=plate, **kwargs)
    reason = minibatch_refusal(report)
    if reason is not None:
        raise ModelError(f"batch_size: {reason}")
