"""Decide from a model's structure whether amortization can match factorized VI (``avi.check``).

Margossian and Blei (2024) characterise when amortized VI loses nothing against factorized VI.
By Lemma 3.1 (CAVI) the optimal factor of a local latent is

    q*(z_n) ∝ exp( E_{q(theta)} E_{q(z_-n)} log p(theta, z, x) ),

so it depends on exactly the data and latents that share a non-separable factor of the joint
with z_n (its prior and its children's likelihoods: its Markov blanket). Hence:

* every z_n's blanket holds only its own datum x_n (and datum n's per-datum arguments) besides
  the globals: the model is simple hierarchical (Definition 3.3) and an ideal inference function
  of x_n exists (Theorem 3.4). Verdict ``"simple-hierarchical"``, ``inputs=(0,)``.
* z_n's blanket holds the data at fixed offsets n + k, k in K, the same for every interior n (the
  saw model, Eq. 11): an ideal function of the window (x_{n+k})_{k in K} exists. Verdict
  ``"expanded-domain"``, ``inputs=sorted(K + {0})``, ready for ``avi.Window(offsets=inputs)``.
* z_n shares a non-separable factor with some z_m, m != n (a hidden Markov model, Eq. 13), or its
  blanket holds data at unbounded or index-dependent offsets (dense models such as Gaussian
  processes): no inference function of a strict subset of the data is ideal (Proposition 3.8).
  Verdict ``"not-amortizable"``, ``inputs=None``.

The blanket is read off the gradients g_s = d log p_s / dz of the per-site log densities log p_s
(one factor of the joint per sample site s), in float64, at random points of the latents drawn
as NumPyro's ``init_to_uniform`` does. For probed data n (every datum of a small problem, two
blocks of consecutive data at N/4 and 3N/4 otherwise), one reverse pass of <v, g_s(z_n)> (v a
random direction of z_n's coordinates) gives the mixed partials d^2 log p_s / dz_n dz_m and the
derivatives d g_s(z_n) / dx_m for every m at once, so windows of any length are found in O(N)
per probe. Discrete data (counts, indices) are probed by swapping rows.

* A dependence on all data through a low-rank pattern shared by every datum (a global summary
  such as mean x or sd x) is a global influence: the summary is the same for every n, so an
  encoder of the window represents it; the report lists it (``summaries``) because the model's
  meaning then changes under minibatches (:func:`refuse_minibatches`).
* A dependence on observed data outside the data plate, datum by datum (houses in a county
  plate), is invisible to an encoder of the plate's data: ``"not-amortizable"``.
* Exchangeability: swapping the windows of two interior data n and m (and z_n, z_m) must map
  g(z_m) to g(z_n); anything the model computes from the index n (a trend, a mask, a scale that
  varies with n) breaks it: ``"not-amortizable"``, with the fix (pass the position as a
  per-datum argument).

Every datum is analysed when the problem holds at most ``ELEMENT_BUDGET`` array elements (the
linear model at N = 100,000 is); larger problems are cut to their first k data when the model
follows its arguments. What the first k show is then verified on all N data
(:mod:`~avi.structure.beyond`: a permutation of the data outside the window of data spread over
the range must leave their factors unchanged, and exchanging windows must exchange them); a
verdict the whole problem does not confirm, or cannot be evaluated on, is "not-amortizable",
with "not verified beyond k data" in the explanation (``StructureReport.verified_data`` = k).
A summary mixed with a window longer than the probes' exclusion radius is separated robustly
(the summary's columns are the many). The program is compiled
once, reused by later calls on the same model and analysed problem (data of the same shapes).
A latent sampled outside the data plate with one coordinate per datum (say
``f ~ MultivariateNormal(0, K)`` over all data) is a local latent.

Modules, each importing only those before it:

* :mod:`~avi.structure.wording`: phrases shared by the explanations.
* :mod:`~avi.structure.problem`: the analysed (sub-)problem, its local latents and per-datum data.
* :mod:`~avi.structure.density`: the per-site log densities and their gradients g_s.
* :mod:`~avi.structure.probes`: the probed data and the derivative probes.
* :mod:`~avi.structure.program`: the compiled program evaluating the probes, and its reuse.
* :mod:`~avi.structure.dependencies`: the dependency edges and the windows.
* :mod:`~avi.structure.beyond`: the test on all data of what a large problem's prefix showed.
* :mod:`~avi.structure.report`: :class:`StructureReport` and the explanation.
* :mod:`~avi.structure.verdict`: :func:`check`.
* :mod:`~avi.structure.refusals`: what the fit must refuse (minibatches of a model summarising
  its data, an encoder without input).
"""

from avi.structure.refusals import minibatch_refusal, refuse_minibatches
from avi.structure.report import StructureReport
from avi.structure.verdict import check

__all__ = [
    "StructureReport",
    "check",
    "minibatch_refusal",
    "refuse_minibatches",
]
