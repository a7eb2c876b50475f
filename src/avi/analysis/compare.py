"""``avi.analysis.compare``: fit several variational families to one model and report the amortization gap.

The amortization gap of a family is the ELBO that F-VI reaches and the family does not
(Prop. 2.1: the amortized family is a subset of the factorized one, so the gap is >= 0 at the
optima; it closes iff an ideal inference function exists, Theorem 3.4). Here it is measured
between fitted approximations:

* ELBO of a fit: ``fit.elbo_draws(eval_particles, seed=EVAL_SEED + seed)``; every family of a
  seed gets the same draws (common random numbers), so the paired differences to F-VI have a
  small variance.
* Gap: the mean of the paired differences ELBO_F-VI(draw) - ELBO_family(draw), with standard
  error sd / sqrt(draws). Over several seeds: the mean over seeds, with standard error
  max(Monte Carlo stderr of that mean, sd over seeds / sqrt(seeds)), so that optimisation
  noise counts too.
* References: each family is measured against the F-VI of its own factor (Prop. 2.1 holds
  within one factor): the first Factorized family with that factor when ``families`` has one,
  else the first Factorized family (the primary reference, :attr:`Comparison.reference`). A
  Factorized family with another factor than the primary's is itself measured against the
  primary (outside it: what the richer factor gains).
* Reference lift (Prop. 2.1): the amortized and constant families of a reference's factor are
  subsets of the factorized one, so at F-VI's optimum no such family's ELBO exceeds F-VI's. A
  reference below one of them has not converged: for each seed where the best of them scores
  higher than F-VI, F-VI is refined from that fit (:func:`avi.refine`, F-VI started from its
  factors) and the refined fit replaces the reference when it scores higher; the table's note
  says so, with the nats it moved. A family outside the reference's (another factor, or
  amortization given the globals) is compared, never refined into.
* Verdict of one seed (two-sided): with margin = VERDICT_STDERRS standard errors +
  ``tolerance``, "open" when gap > margin, "closed" when |gap| <= margin, and, when gap <
  -margin, "reference not converged" for a family inside the reference's (Prop. 2.1 forbids
  it at the optimum) or "gain" for one outside it. A positive ``tolerance`` (nats) forgives
  optimisation error, which Monte Carlo error does not cover: an MLP encoder stopped by the
  stop rule can stay a few tenths of a nat below F-VI although an ideal function is within
  its reach (README: MLP(16) on the linear model, N = 10,000, 0.37 +- 0.03 nats).
* Verdict over seeds: the seeds' common verdict when they agree; "reference not converged"
  when any seed says so; otherwise "seeds disagree" (the note counts the seeds of each
  verdict). A tie of one closed seed and one open seed is never "closed".
* Wall time and time to convergence exclude compilation, which would otherwise dominate small
  problems and favour whichever family happened to reuse a compiled program: the first
  chunk's excess time over the second chunk's is subtracted (:func:`compilation_time`).
  Time to convergence is the wall time of the first point of ``fit.history`` whose ELBO is
  within 1% of F-VI's final ELBO E*, i.e. >= E* - 0.01 |E*| (the paper's criterion,
  section 4); NaN if never. Medians over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from avi.analysis.diagnostics import factor_gradient_norm
from avi.analysis.per_datum import per_datum_elbo_draws
from avi.analysis.refine import refine, split_options
from avi.errors import AviError, FamilyError, Interrupted
from avi.families import Factorized, Family, as_family
from avi.fit import fit as fit_model
from avi.fit import interrupts_raise
from avi.model import Model
from avi.result import Estimate, Fit
from avi.vi import History

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EVAL_SEED = 10_000
"""The fits of seed s are evaluated with the draws of seed EVAL_SEED + s."""
VERDICT_STDERRS = 2.0
"""A gap within this many standard errors (plus the tolerance) of zero is "closed"."""
NOT_CONVERGED = "reference not converged"
"""The verdict of a family inside the reference's that beats it beyond noise (Prop. 2.1)."""
CONVERGENCE_FRACTION = 0.01
"""The paper's convergence criterion: ELBO within 1% of F-VI's final ELBO."""
REFERENCE = "F-VI"
"""Name of the F-VI reference that :func:`compare` adds when no family is Factorized."""
SUMMARY_COLUMNS = (
    "family", "elbo", "stderr", "gap", "gap_stderr", "verdict", "steps", "wall_time",
    "time_to_convergence", "num_parameters", "note",
)  # fmt: skip


def paired_gap(reference: np.ndarray, draws: np.ndarray) -> Estimate:
    """Mean and standard error of reference - draws, draw by draw (common random numbers)."""
    difference = np.asarray(reference, np.float64) - np.asarray(draws, np.float64)
    return Estimate(
        float(difference.mean()), float(difference.std(ddof=1) / math.sqrt(difference.size))
    )


def over_seeds(estimates: Sequence[Estimate]) -> Estimate:
    """Mean over seeds; stderr max(Monte Carlo stderr of the mean, sd over seeds / sqrt(seeds))."""
    means = np.array([e.mean for e in estimates])
    count = means.size
    monte_carlo = math.sqrt(sum(e.stderr**2 for e in estimates)) / count
    spread = float(means.std(ddof=1)) / math.sqrt(count) if count > 1 else 0.0
    return Estimate(float(means.mean()), max(monte_carlo, spread))


def verdict(gap: Estimate, tolerance: float = 0.0, inside: bool = True) -> str:
    """The two-sided verdict of one gap F-VI - family (module docstring).

    Args:
        gap: the gap's estimate.
        tolerance: nats forgiven beyond VERDICT_STDERRS standard errors.
        inside: whether the family lies inside the reference's (then a negative gap beyond
            noise means the reference has not converged; outside, it is a gain).

    Returns:
        "open", "closed", :data:`NOT_CONVERGED` or "gain".
    """
    margin = VERDICT_STDERRS * gap.stderr + tolerance
    if gap.mean > margin:
        return "open"
    if gap.mean < -margin:
        return NOT_CONVERGED if inside else "gain"
    return "closed"


def seeds_verdict(verdicts: Sequence[str]) -> str:
    """The verdict over seeds: their common verdict, :data:`NOT_CONVERGED` if any seed's, else
    "seeds disagree"."""
    if len(set(verdicts)) == 1:
        return verdicts[0]
    return NOT_CONVERGED if NOT_CONVERGED in verdicts else "seeds disagree"


def inside(family: Family, reference: Family) -> bool:
    """Whether ``family``'s approximations all lie in the reference F-VI's family: same factor,
    each datum's factor a function of the datum only (not of the globals' draw)."""
    return family.factor == reference.factor and not getattr(family, "given_globals", False)


def _median(values: Iterable[float]) -> float:
    """Median, counting NaN (never) as +inf; NaN when that median is +inf."""
    finite_or_inf = np.nan_to_num(np.asarray(list(values), np.float64), nan=np.inf)
    median = float(np.median(finite_or_inf))
    return median if math.isfinite(median) else math.nan


def compilation_time(fit: Fit) -> float:
    """Compilation time within a fit's wall time: the first chunk's excess over the second's."""
    times = fit.history.wall_time
    if times.size < 2:
        return 0.0
    return max(0.0, float(times[0] - (times[1] - times[0])))


def first_time_within(fit: Fit, target: float) -> float:
    """Wall time (compilation excluded) of the first history point with ELBO >= target, or NaN."""
    reached = np.flatnonzero(fit.history.elbo >= target)
    if not reached.size:
        return math.nan
    return float(fit.history.wall_time[reached[0]]) - compilation_time(fit)


@dataclass(frozen=True)
class Comparison:
    """Fits of several families to one model, with the draws that score them.

    Attributes:
        families: name -> family, in the order given (the added reference first, if any).
        reference: name of the primary F-VI reference family (the first Factorized one).
        added_reference: whether :func:`compare` added the reference (no family was Factorized).
        seeds: the seeds, one fit of every family per seed.
        fits: name -> the fits, one per seed.
        draws: name -> per seed, the ELBO draws of seed EVAL_SEED + seed.
        options: the options every fit got (those of :func:`avi.fit`).
        tolerance: nats of gap forgiven beyond Monte Carlo error in the verdicts.
        lifted: reference name -> seed -> (the family it was refined from, the nats it
            gained), for every seed whose F-VI fit was replaced by its refinement (module
            docstring).
        references: family name -> the name of the reference it is measured against (module
            docstring); a family absent from it is measured against ``reference``.
    """

    families: Mapping[str, Family]
    reference: str
    added_reference: bool
    seeds: tuple[int, ...]
    fits: Mapping[str, tuple[Fit, ...]]
    draws: Mapping[str, tuple[np.ndarray, ...]]
    options: Mapping[str, Any]
    tolerance: float = 0.0
    lifted: Mapping[str, Mapping[int, tuple[str, float]]] = field(default_factory=dict)
    references: Mapping[str, str] = field(default_factory=dict)

    def _name(self, family: str) -> str:
        if family not in self.families:
            raise FamilyError(
                f"family={family!r} is not in this comparison; its families are "
                f"{', '.join(repr(n) for n in self.families)}."
            )
        return family

    def reference_of(self, family: str) -> str:
        """The name of the reference ``family`` is measured against (module docstring)."""
        return self.references.get(self._name(family), self.reference)

    def elbo(self, family: str) -> Estimate:
        """The family's ELBO, over seeds."""
        draws = self.draws[self._name(family)]
        return over_seeds(
            [Estimate(float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))) for d in draws]
        )

    def gap(self, family: str) -> Estimate:
        """The family's gap to its reference (paired, common random numbers), over seeds."""
        reference = self.draws[self.reference_of(family)]
        return over_seeds(
            [paired_gap(r, d) for r, d in zip(reference, self.draws[family], strict=True)]
        )

    def seed_verdicts(self, family: str) -> tuple[str, ...]:
        """The family's verdict at each seed (module docstring)."""
        reference = self.reference_of(family)
        inside_ = inside(self.families[family], self.families[reference])
        return tuple(
            verdict(paired_gap(r, d), self.tolerance, inside_)
            for r, d in zip(self.draws[reference], self.draws[family], strict=True)
        )

    def verdict(self, family: str) -> str:
        """The family's verdict over seeds ("reference" for F-VI itself)."""
        if self._name(family) == self.reference:
            return "reference"
        return seeds_verdict(self.seed_verdicts(family))

    def _note(self, family: str) -> str:
        """What the verdict rests on beyond the numbers: a reference's refinement, a reference
        other than the primary, seeds that disagree."""
        notes = [
            f"refined from {source!r} at seed {seed} (+{gain:.3g} nats)"
            for seed, (source, gain) in sorted(self.lifted.get(family, {}).items())
        ]
        if family == self.reference:
            return "; ".join(notes)
        if self.reference_of(family) != self.reference:
            notes.append(f"gap to {self.reference_of(family)!r} (same factor)")
        verdicts = self.seed_verdicts(family)
        if len(set(verdicts)) > 1:
            counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
            notes.append("seeds: " + ", ".join(f"{count} {v}" for v, count in counts.items()))
        return "; ".join(notes)

    def summary(self) -> pd.DataFrame:
        """One row per family, with columns SUMMARY_COLUMNS (module docstring for each).

        ``steps``, ``wall_time`` and ``time_to_convergence`` are medians over seeds;
        ``num_parameters`` counts the scalar variational parameters (2N + 2 for F-VI with one
        local and one global coordinate; a fixed number for an encoder); ``note`` says when
        the reference was refined from another family's fit and when seeds disagree.
        """
        target_elbo = self.elbo(self.reference).mean
        target = target_elbo - CONVERGENCE_FRACTION * abs(target_elbo)
        rows = []
        for name in self.families:
            fits = self.fits[name]
            elbo, gap = self.elbo(name), self.gap(name)
            rows.append(
                {
                    "family": name,
                    "elbo": elbo.mean,
                    "stderr": elbo.stderr,
                    "gap": gap.mean,
                    "gap_stderr": gap.stderr,
                    "verdict": self.verdict(name),
                    "steps": _median(f.num_steps for f in fits),
                    "wall_time": _median(f.wall_time - compilation_time(f) for f in fits),
                    "time_to_convergence": _median(first_time_within(f, target) for f in fits),
                    "num_parameters": fits[0].num_parameters,
                    "note": self._note(name),
                }
            )
        return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))

    def per_datum_gaps(self, family: str, num_particles: int = 100) -> np.ndarray:
        """Which data the family serves worst: l_n(F-VI) - l_n(family) for every datum n.

        l_n is datum n's ELBO contribution (:mod:`avi.analysis.per_datum`): the expected log density
        of the data plate's slice n (the prior of z_n and the likelihood of x_n) under
        q(theta) q(z_n), plus the entropy of q(z_n). The F-VI ELBO minus the family's is the
        sum of these gaps plus the difference of the global parts E_q[log p(theta)] +
        H[q(theta)] (small: both families fit q(theta) alike). Estimated with common random
        numbers (the same draws for both families), averaged over seeds.

        Args:
            family: a family's name.
            num_particles: Monte Carlo draws per fit.

        Returns:
            (N,) array of per-datum gaps.
        """
        gaps = [
            per_datum_elbo_draws(
                reference, num_particles=num_particles, seed=EVAL_SEED + seed
            ).mean(0)
            - per_datum_elbo_draws(own, num_particles=num_particles, seed=EVAL_SEED + seed).mean(0)
            for seed, reference, own in zip(
                self.seeds, self.fits[self.reference_of(family)], self.fits[family], strict=True
            )
        ]
        return np.mean(gaps, axis=0)

    def refinement(
        self, num_steps: int | None = None, gradient_particles: int = 1000, **options: Any
    ) -> pd.DataFrame:
        """How much of each family's gap refinement recovers, and the F-VI gradient there.

        For every family that assigns factors through a shared function (amortized or
        constant), each seed's fit is refined (:func:`avi.refine`: F-VI started from its
        factors, the paper's section 5 diagnostic) and scored with the same draws.

        Columns: family; gap, gap_stderr (as in :meth:`summary`); refined_gap,
        refined_gap_stderr (the refined fit's gap to F-VI); refined_verdict (its verdict over
        seeds: :data:`NOT_CONVERGED` when refinement beats the reference beyond noise);
        recovered = 1 - refined_gap / gap, the fraction of the gap that refinement recovers
        (NaN when the gap is not open, or when the refined fit beats the reference: the fraction
        would exceed 1 by the reference's own shortfall); gradient_norm, gradient_noise
        (:func:`avi.factor_gradient_norm` at the fit, mean over seeds: about zero when the
        encoder is ideal). Families outside their reference's (:func:`inside`) are left out.

        Args:
            num_steps: refinement steps (None: the stop rule decides).
            gradient_particles: draws of the gradient estimate.
            **options: options of the refinement's :func:`avi.fit` (e.g. ``optimizer``).
        """
        options = {"progress": self.options.get("progress", True), **options}
        rows = []
        for name, family in self.families.items():
            reference_name = self.reference_of(name)
            if not family.infers_new_data or not inside(family, self.families[reference_name]):
                continue
            refined, norms = [], []
            for seed, fit, reference in zip(
                self.seeds, self.fits[name], self.draws[reference_name], strict=True
            ):
                draws = refine(fit, num_steps=num_steps, **options).elbo_draws(
                    reference.size, seed=EVAL_SEED + seed
                )
                refined.append(paired_gap(reference, draws))
                norms.append(
                    factor_gradient_norm(
                        fit, num_particles=gradient_particles, seed=EVAL_SEED + seed
                    )
                )
            gap, refined_gap = self.gap(name), over_seeds(refined)
            refined_verdict = seeds_verdict([verdict(r, self.tolerance) for r in refined])
            rows.append(
                {
                    "family": name,
                    "gap": gap.mean,
                    "gap_stderr": gap.stderr,
                    "refined_gap": refined_gap.mean,
                    "refined_gap_stderr": refined_gap.stderr,
                    "refined_verdict": refined_verdict,
                    "recovered": (
                        1 - refined_gap.mean / gap.mean
                        if self.verdict(name) == "open" and refined_verdict != NOT_CONVERGED
                        else math.nan
                    ),
                    "gradient_norm": float(np.mean([n.norm for n in norms])),
                    "gradient_noise": float(np.mean([n.noise for n in norms])),
                }
            )
        return pd.DataFrame(rows)

    def plot_elbo(self) -> Figure:
        """ELBO against wall time (compilation excluded) for every family and seed."""
        from avi.analysis import (
            comparison_plots,  # matplotlib only when plotting: keeps `import avi` light
        )

        def compile_free(fit: Fit) -> History:
            return fit.history._replace(wall_time=fit.history.wall_time - compilation_time(fit))

        return comparison_plots.elbo_against_time(
            {name: [compile_free(f) for f in fits] for name, fits in self.fits.items()},
            self.elbo(self.reference).mean,
            CONVERGENCE_FRACTION,
        )

    def plot_per_datum_gaps(self, family: str, num_particles: int = 100) -> Figure:
        """Histogram of :meth:`per_datum_gaps`."""
        from avi.analysis import comparison_plots  # matplotlib only when plotting

        return comparison_plots.per_datum_gap_histogram(
            self.per_datum_gaps(family, num_particles), family, self.reference_of(family)
        )


def reference_names(families: Mapping[str, Family], primary: str) -> dict[str, str]:
    """Family name -> the reference it is measured against (module docstring): the first
    Factorized family of its factor, else ``primary``; a factor's reference other than the
    primary is measured against the primary."""
    by_factor: dict[Any, str] = {}
    for name, family in families.items():
        if isinstance(family, Factorized):
            by_factor.setdefault(family.factor, name)
    references = {}
    for name, family in families.items():
        own = by_factor.get(family.factor, primary)
        references[name] = primary if own == name else own
    return references


def _families(families: Mapping[str, Any] | None) -> tuple[dict[str, Family], str, bool]:
    """(name -> family with the reference first if added, the primary reference's name,
    added?).

    Raises:
        FamilyError: no family, a value that is not a family, or a name clash with REFERENCE.
    """
    if families is None:
        families = {name: name for name in ("factorized", "constant", "amortized")}
    if not isinstance(families, Mapping) or not families:
        raise FamilyError(
            f"families={families!r}: give a non-empty dict of name -> family, e.g. "
            "{'F-VI': avi.Factorized(), 'A-VI': avi.Amortized(avi.MLP(width=16))}."
        )
    resolved = {}
    for name, family in families.items():
        try:
            resolved[str(name)] = as_family(family)
        except FamilyError as error:
            raise FamilyError(f"families[{name!r}]: {error}") from error
    factorized = [name for name, family in resolved.items() if isinstance(family, Factorized)]
    if factorized:
        return resolved, factorized[0], False
    if REFERENCE in resolved:
        raise FamilyError(
            f"families[{REFERENCE!r}] is not Factorized, but no family is, so compare would add "
            f"avi.Factorized() as the reference under that name; rename it or make it Factorized."
        )
    return {REFERENCE: Factorized(), **resolved}, REFERENCE, True


def _seeds(seeds: int | Sequence[int]) -> tuple[int, ...]:
    """``seeds`` as a tuple: an int n means 0..n-1.

    Raises:
        AviError: not a positive int nor a sequence of distinct ints.
    """
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool) and seeds >= 1:
        return tuple(range(int(seeds)))
    if (
        isinstance(seeds, Sequence)
        and seeds
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds)
        and len(set(seeds)) == len(seeds)
    ):
        return tuple(int(s) for s in seeds)
    raise AviError(f"seeds={seeds!r}: give a number of seeds >= 1 or a list of distinct ints.")


def compare(
    model: Model,
    *args: Any,
    families: Mapping[str, Any] | None = None,
    seeds: int | Sequence[int] = 1,
    eval_particles: int = 1000,
    tolerance: float = 0.0,
    refine_reference: bool = True,
    **options: Any,
) -> Comparison:
    """Fit ``model(*args, **model_kwargs)`` with every family and measure the amortization gap.

    The primary F-VI reference is the first Factorized family of ``families``; when there is
    none, ``avi.Factorized()`` is added under the name ``"F-VI"`` (:data:`REFERENCE`) and
    fitted first. A family whose factor has a Factorized family of its own in ``families`` is
    measured against that one (module docstring). Every family is fitted once per seed with the same options; the module docstring
    says how fits are scored. ``comparison.summary()`` gives the table.

    Args:
        model: a NumPyro model.
        *args: the model's positional arguments.
        families: name -> family (``avi.Factorized()``, ``avi.Constant()``,
            ``avi.Amortized(encoder, inputs)`` or the strings "factorized", "constant",
            "amortized"); default: those three strings.
        seeds: number of seeds (0..seeds-1) or a list of seeds.
        eval_particles: draws of each final ELBO.
        tolerance: nats of gap forgiven in the verdicts beyond Monte Carlo error (module
            docstring); default 0.
        refine_reference: refine F-VI from the best fit inside its family where that fit
            scores higher (module docstring); False keeps every fit as fitted, and a reference
            below such a fit then shows as :data:`NOT_CONVERGED`.
        **options: options of :func:`avi.fit` (``num_steps``, ``optimizer``, ``batch_size``,
            ``progress``, ...) for every fit, except ``family`` and ``seed``; all other
            keywords are the model's keyword arguments.

    Returns:
        The :class:`Comparison`.

    Raises:
        FamilyError: a family that is not one, or a name clash with the added reference.
        AviError: bad ``seeds``, ``eval_particles`` or ``tolerance``, or ``family`` or ``seed``
            among the options.
    """
    resolved, reference, added = _families(families)
    seed_list = _seeds(seeds)
    if not isinstance(eval_particles, (int, np.integer)) or eval_particles < 2:
        raise AviError(f"eval_particles={eval_particles!r}: give an integer >= 2.")
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance >= 0:
        raise AviError(f"tolerance={tolerance!r}: give a number of nats >= 0.")
    if not isinstance(refine_reference, bool):
        raise AviError(f"refine_reference={refine_reference!r}: give True or False.")
    fit_options, model_kwargs = split_options(options)
    clash = sorted({"family", "seed"} & fit_options.keys())
    if clash:
        raise AviError(
            f"compare sets {' and '.join(clash)} for each fit itself: give families= and seeds=."
        )
    fits: dict[str, tuple[Fit, ...]] = {}
    draws: dict[str, tuple[np.ndarray, ...]] = {}
    for name, family in resolved.items():
        done = []
        for seed in seed_list:
            try:
                with interrupts_raise():
                    fitted = fit_model(
                        model, *args, family=family, seed=seed, **fit_options, **model_kwargs
                    )
            except Interrupted as interrupted:
                error = Interrupted(
                    f"avi.compare was interrupted while fitting family '{name}' (seed {seed}); "
                    "the error's `fits` holds the fits done, family -> fits by seed."
                )
                error.fits = {**fits, name: (*done, interrupted.fits["interrupted"])}
                raise error from None
            done.append(fitted)
        fits[name] = tuple(done)
        draws[name] = tuple(
            f.elbo_draws(int(eval_particles), seed=EVAL_SEED + seed)
            for seed, f in zip(seed_list, fits[name], strict=True)
        )
    references = reference_names(resolved, reference)
    lifted = {}
    if refine_reference:
        for name in dict.fromkeys(references.values()):
            candidates = [
                n
                for n, family in resolved.items()
                if references[n] == name
                and family.infers_new_data
                and inside(family, resolved[name])
            ]
            lift = _lift_reference(name, candidates, seed_list, fits, draws, fit_options)
            if lift:
                lifted[name] = lift
    return Comparison(
        resolved,
        reference,
        added,
        seed_list,
        fits,
        draws,
        fit_options,
        float(tolerance),
        lifted,
        references,
    )


def _lift_reference(
    reference: str,
    candidates: Sequence[str],
    seeds: Sequence[int],
    fits: dict[str, tuple[Fit, ...]],
    draws: dict[str, tuple[np.ndarray, ...]],
    options: Mapping[str, Any],
) -> dict[int, tuple[str, float]]:
    """Refine each seed's F-VI fit ``reference`` from the best of the ``candidates`` (fits
    inside its family) that scores higher (Prop. 2.1; module docstring); replace it, in
    ``fits`` and ``draws``, by the refinement when that scores higher. Returns seed -> (source
    family, nats gained) for the replaced seeds."""
    refine_options = {k: v for k, v in options.items() if k not in ("plate", "init")}
    lifted = {}
    for position, seed in enumerate(seeds):
        own = draws[reference][position]
        best = max(candidates, key=lambda n: float(draws[n][position].mean()), default=None)
        if best is None or draws[best][position].mean() <= own.mean():
            continue
        refined = refine(fits[best][position], seed=seed, **refine_options)
        new = refined.elbo_draws(own.size, seed=EVAL_SEED + seed)
        if new.mean() > own.mean():
            fits[reference] = _replaced(fits[reference], position, refined)
            draws[reference] = _replaced(draws[reference], position, new)
            lifted[seed] = (best, float(new.mean() - own.mean()))
    return lifted


def _replaced(values: tuple[Any, ...], position: int, value: Any) -> tuple[Any, ...]:
    return values[:position] + (value,) + values[position + 1 :]
