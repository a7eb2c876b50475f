"""The picture of the aggregate posterior q(z) = (1/N) sum_n q(z | x_n) of a local site
(:meth:`avi.Fit.aggregate_posterior`) against the prior: where the prior puts mass that no datum's factor covers (the "holes" of a
VAE's latent space), draws from the prior decode to nothing the data look like.
"""

from __future__ import annotations

import jax
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from numpyro.infer import Predictive

from avi.errors import AviError
from avi.result import Fit


def plot_aggregate_posterior(
    fit: Fit, site: str, num_samples: int = 5_000, seed: int = 0
) -> Figure:
    """The aggregate posterior of a local ``site`` against its prior (drawn from the model,
    globals from their prior): a histogram of each for a scalar site, a scatter of the first
    two coordinates otherwise. A prior that cannot be sampled (an improper prior on a global)
    is left out and the title says so."""
    aggregate = fit.aggregate_posterior()
    if site not in aggregate:
        names = ", ".join(aggregate) or "none"
        raise AviError(f"site={site!r} is not a local site of the model (its local sites: {names}).")
    key_q, key_p = jax.random.split(jax.random.PRNGKey(seed))
    drawn = np.asarray(aggregate[site].sample(key_q, (num_samples,))).reshape(num_samples, -1)
    prior = None
    if fit.problem is not None and not fit.streamed:
        try:
            layout = fit.traced.layout
            repeats = max(1, -(-num_samples // layout.num_data))
            draws = Predictive(fit.learned_model, num_samples=repeats, return_sites=[site])(
                key_p, *fit.args, **fit.kwargs
            )[site]
            axis = 1 + next(s for s in layout.locals if s.name == site).plate_axis
            prior = np.moveaxis(np.asarray(draws), axis, 1)
            prior = prior.reshape(prior.shape[0] * prior.shape[1], -1)[:num_samples]
        except (NotImplementedError, ValueError, TypeError):
            prior = None
    figure, axes = plt.subplots(figsize=(6, 4.5))
    if drawn.shape[1] == 1:
        bins = np.histogram_bin_edges(
            np.concatenate([drawn[:, 0], prior[:, 0]]) if prior is not None else drawn[:, 0], 60
        )
        axes.hist(drawn[:, 0], bins=bins, density=True, alpha=0.6, label="aggregate posterior")
        if prior is not None:
            axes.hist(prior[:, 0], bins=bins, density=True, alpha=0.6, label="prior")
        axes.set_xlabel(site)
        axes.set_ylabel("density")
    else:
        if prior is not None:
            axes.scatter(prior[:, 0], prior[:, 1], s=2, alpha=0.3, label="prior")
        axes.scatter(drawn[:, 0], drawn[:, 1], s=2, alpha=0.3, label="aggregate posterior")
        axes.set_xlabel(f"{site}[0]")
        axes.set_ylabel(f"{site}[1]")
    title = f"{site}: aggregate posterior (1/N) sum_n q(z | x_n)"
    if prior is None:
        title += " (prior not drawable)"
    axes.set_title(title)
    axes.legend()
    return figure
