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
as NumPyro's ``init_to_uniform`` does:

* z_n and z_m are coupled through s iff the mixed partial d^2 log p_s / dz_n dz_m != 0. One
  Hessian-vector product (``jax.jvp`` of ``jax.jacrev``) along a random direction of z_n's
  coordinates gives the whole column.
* z_n depends on datum m of a real-valued data array x (an observed site or a per-datum argument)
  through s iff d g_s(z_n) / dx_m != 0 along a random direction of row m (a Jacobian-vector
  product). For a discrete array (counts, indices), iff g_s(z_n) changes when row m is swapped
  for another datum's row (two donors: the most different row, and the one whose sum differs most).

The window is the union of the offsets found over the probed data (data at the ends lack some
neighbours, Remark 3.7; masks and discrete data can hide a dependency at some data).

The analysis runs on a small sub-problem, the first ``SUB_SIZE`` data (per-datum arguments
sliced), when the model's data plate follows its arguments; otherwise on the full data, probing
two interior data within ``WINDOW`` neighbours plus one joint perturbation of all farther rows,
so the work stays O(N). It is one compiled program, reused by later calls on the same model and
analysed problem (data of the same shapes); the sub-problem's structure is read with
``jax.eval_shape``. A latent sampled outside the data plate with one coordinate per datum (say
``f ~ MultivariateNormal(0, K)`` over all data) is a local latent.

Modules, each importing only those before it:

* :mod:`~avi.structure.wording`: phrases shared by the explanations.
* :mod:`~avi.structure.problem`: the analysed (sub-)problem, its local latents and per-datum data.
* :mod:`~avi.structure.density`: the per-site log densities and their gradients g_s.
* :mod:`~avi.structure.probes`: the probed data and the derivative probes.
* :mod:`~avi.structure.program`: the compiled program evaluating the probes, and its reuse.
* :mod:`~avi.structure.dependencies`: the dependency edges and the windows.
* :mod:`~avi.structure.report`: :class:`StructureReport` and the explanation.
* :mod:`~avi.structure.verdict`: :func:`check`.
"""

from avi.structure.report import StructureReport
from avi.structure.verdict import check

__all__ = ["StructureReport", "check"]
