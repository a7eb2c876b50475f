"""``avi reproduce NAME|all``: run the paper's experiments and report whether they agree with it.

For every experiment (an :class:`avi.paper.experiments.common.Setup`) and every seed, each
family is fitted with the setup's settings and scored; the scores go to CSV files, figures and
``REPORT.md`` (written from the files, so it covers every experiment in the output directory).

Scoring (Margossian and Blei 2024, section 4; the decisions are ours where the paper is silent):

* Final ELBO of a fit: ``fit.elbo_draws(eval_particles, seed=EVAL_SEED + seed)``. Every family
  of a seed gets the same draws (common random numbers), so the paired differences to F-VI have
  a small variance. Where the setup has the ELBO in closed form, the exact value and the exact
  gap are recorded too (``exact_elbo``, ``exact_gap``); verdicts use the Monte Carlo estimates.
* Gap of a fit: the mean of the paired differences ELBO_F-VI(draw) - ELBO_family(draw) against
  the same seed's F-VI fit, with standard error sd / sqrt(draws). The fit's verdict is
  two-sided: "closed" when |gap| is at most 2 standard errors plus the setup's tolerance (the
  strict criterion's 1e-4 nats per datum unless the setup says less: Monte Carlo error and the
  optimisation error of a fixed budget), "open"
  above, "reference not converged" below (Prop. 2.1 forbids an amortized fit above F-VI's
  optimum). (The standard error is floored at the float32 resolution of the ELBO, below which
  two fits cannot differ meaningfully.)
* Reference (Prop. 2.1): where a fit of a family inside F-VI's scores above the seed's F-VI fit,
  F-VI is refined from the best such fit (:func:`avi.refine` with the stop rule, capped at the
  setup's number of steps) and, when the refinement scores
  higher, it becomes the seed's reference and every fit of the seed is scored again against it
  (``reference_lift``: the nats it gained).
* Verdict of a family: its seeds' common verdict; "reference not converged" if any seed says so;
  otherwise "seeds disagree" (the count of closed seeds is reported). The gap shown is the
  median over seeds, with the median standard error.
* Convergence: each point of an ELBO path is the mean over ``chunk_size`` = 20 consecutive
  iterations, the paper's +-10-iteration running mean. E* is F-VI's converged ELBO (its mean final
  ELBO over seeds). The paper's 1% criterion is met at the first point with ELBO >= E* - 0.01 |E*|
  (loss within 1% of F-VI's); the strict one at the first point with ELBO >= E* - max(1e-4 N,
  2 noise), where noise is the standard deviation of the path's points about their trend at the
  end (a path cannot resolve less). Not met by the last iteration: "never" (infinite time).
* Wall time excludes compilation: the first chunk's excess time over the second one's is
  subtracted from every point of the path (only the first fit of a family compiles).

Modules, in the order of the data: :mod:`~avi.paper.reproduce.run` fits and scores
(:mod:`~avi.paper.reproduce.scoring` for one fit, :mod:`~avi.paper.reproduce.verdicts` over
seeds); :mod:`~avi.paper.reproduce.files` and :mod:`~avi.paper.reproduce.figures` write one
experiment's run; :mod:`~avi.paper.reproduce.report` writes REPORT.md from the files;
:mod:`~avi.paper.reproduce.command` is the entry point and its command line. What is particular
to an experiment (its report columns and figures) comes from its entry in
:mod:`avi.paper.experiments.registry`.
"""

from avi.paper.reproduce.command import reproduce
from avi.paper.reproduce.figures import save_figures
from avi.paper.reproduce.files import save
from avi.paper.reproduce.report import write_report
from avi.paper.reproduce.run import ExperimentResult, Log, RunInfo, run_experiment
from avi.paper.reproduce.scoring import (
    EVAL_SEED,
    PAPER_FRACTION,
    STRICT_NATS_PER_DATUM,
    compile_free_times,
    convergence,
    first_reach,
    fit_verdict,
    path_noise,
)
from avi.paper.reproduce.verdicts import expected, family_verdict, mean_stderr, summarize

__all__ = [
    "EVAL_SEED",
    "PAPER_FRACTION",
    "STRICT_NATS_PER_DATUM",
    "ExperimentResult",
    "Log",
    "RunInfo",
    "compile_free_times",
    "convergence",
    "expected",
    "family_verdict",
    "first_reach",
    "fit_verdict",
    "mean_stderr",
    "path_noise",
    "reproduce",
    "run_experiment",
    "save",
    "save_figures",
    "summarize",
    "write_report",
]
