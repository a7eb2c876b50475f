"""``avi reproduce NAME|all``: run the paper's experiments and report whether they agree with it.

For every experiment (an :class:`avi.paper.experiments.common.Setup`) and every seed, each family is
fitted with the setup's settings and scored; the scores go to CSV files, figures and
``REPORT.md`` (written from the files, so it covers every experiment in the output directory).

Scoring (Margossian and Blei 2024, section 4; the decisions are ours where the paper is silent):

* Final ELBO of a fit: ``fit.elbo_draws(eval_particles, seed=EVAL_SEED + seed)``. Every family
  of a seed gets the same draws (common random numbers), so the paired differences to F-VI have
  a small variance. Where the setup has the ELBO in closed form, the exact value and the exact
  gap are recorded too (``exact_elbo``, ``exact_gap``); verdicts use the Monte Carlo estimates.
* Gap of a fit: the mean of the paired differences ELBO_F-VI(draw) - ELBO_family(draw) against
  the same seed's F-VI fit, with standard error sd / sqrt(draws). The fit *closes* the gap when
  the gap is at most 2 standard errors: within Monte Carlo error. (The standard error is floored
  at the float32 resolution of the ELBO, below which two fits cannot differ meaningfully.)
* Verdict of a family: "closed" when its fits close the gap in at least half of the seeds, else
  "open" (a seed whose optimisation failed does not decide alone; the count is reported). The
  gap shown is the median over seeds, with the median standard error.
* Convergence: each point of an ELBO path is the mean over ``chunk_size`` = 20 consecutive
  iterations, the paper's +-10-iteration running mean. E* is F-VI's converged ELBO (its mean final
  ELBO over seeds). The paper's 1% criterion is met at the first point with ELBO >= E* - 0.01 |E*|
  (loss within 1% of F-VI's); the strict one at the first point with ELBO >= E* - max(1e-4 N,
  2 noise), where noise is the standard deviation of the path's points about their trend at the
  end (a path cannot resolve less). Not met by the last iteration: "never" (infinite time).
* Wall time excludes compilation: the first chunk's excess time over the second one's is
  subtracted from every point of the path (only the first fit of a family compiles).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

import avi
from avi.analysis import plots
from avi.errors import AviError
from avi.paper.experiments import hmm, registry
from avi.paper.experiments.common import (
    DEFAULT_SEEDS,
    REFERENCE_LABEL,
    SIZES,
    Claim,
    FamilySpec,
    Setup,
    check_size,
    fit_options,
)

EVAL_SEED = 10_000
"""Seed s evaluates every family's final ELBO with the draws of seed EVAL_SEED + s."""
PAPER_FRACTION = 0.01
"""The paper's convergence criterion: loss within 1% of F-VI's converged loss."""
STRICT_NATS_PER_DATUM = 1e-4
"""The strict criterion: ELBO within 1e-4 nats per datum of F-VI's converged ELBO."""
VERDICT_STDERRS = 2.0
"""A fit closes the gap when the gap is at most this many standard errors."""

Log = Callable[[str], None]


# --- scoring one fit ----------------------------------------------------------------------------


def compile_free_times(times: np.ndarray) -> np.ndarray:
    """Checkpoint wall times without compilation: the first chunk's excess over the second's."""
    if times.size < 2:
        return times
    overhead = max(0.0, float(times[0] - (times[1] - times[0])))
    return times - overhead


def path_noise(elbo: np.ndarray) -> float:
    """Standard deviation of a path's points about their trend over its last quarter.

    Differences of consecutive points remove a slow trend; their sd over sqrt(2) is the sd of
    one point. Zero for paths too short to tell.
    """
    tail = np.asarray(elbo)[len(elbo) * 3 // 4 :]
    if tail.size < 3:
        return 0.0
    return float(np.std(np.diff(tail), ddof=1) / math.sqrt(2))


def first_reach(
    steps: np.ndarray, times: np.ndarray, elbo: np.ndarray, target: float
) -> tuple[float, float]:
    """(iteration, wall time) of the first path point with ELBO >= target; (inf, inf) if none."""
    reached = np.flatnonzero(np.asarray(elbo) >= target)
    if reached.size == 0:
        return math.inf, math.inf
    return float(steps[reached[0]]), float(times[reached[0]])


def convergence(path: pd.DataFrame, reference: float, strict_tolerance: float) -> dict[str, float]:
    """Iterations and seconds to the 1% and strict criteria for one fit's path."""
    steps, times, elbo = (path[c].to_numpy() for c in ("step", "wall_time", "elbo"))
    threshold = max(strict_tolerance, 2.0 * path_noise(elbo))
    steps_1pct, time_1pct = first_reach(
        steps, times, elbo, reference - PAPER_FRACTION * abs(reference)
    )
    steps_strict, time_strict = first_reach(steps, times, elbo, reference - threshold)
    return {
        "steps_1pct": steps_1pct,
        "time_1pct": time_1pct,
        "steps_strict": steps_strict,
        "time_strict": time_strict,
        "strict_threshold": threshold,
    }


def paired_gap(reference: np.ndarray, draws: np.ndarray) -> tuple[float, float]:
    """Mean of the per-draw differences reference - draws and its standard error."""
    difference = np.asarray(reference, dtype=np.float64) - np.asarray(draws, dtype=np.float64)
    return float(np.mean(difference)), float(
        np.std(difference, ddof=1) / math.sqrt(difference.size)
    )


def closes(gap: float, stderr: float, elbo: float) -> bool:
    """Whether a gap is within Monte Carlo error (the stderr floored at float32 resolution)."""
    resolution = float(np.finfo(np.float32).eps) * abs(elbo)
    return gap <= VERDICT_STDERRS * max(stderr, resolution)


def _path(spec: FamilySpec, seed: int, fit: avi.Fit) -> pd.DataFrame:
    history = fit.history
    return pd.DataFrame(
        {
            "family": spec.label,
            "seed": seed,
            "step": history.step,
            "wall_time": compile_free_times(np.asarray(history.wall_time)),
            "elbo": history.elbo,
        }
    )


class _Reference(NamedTuple):
    """The seed's F-VI fit, against which the seed's other fits are scored."""

    draws: np.ndarray
    exact: float | None


def _score(
    setup: Setup, fit: avi.Fit, seed: int, reference: _Reference | None
) -> tuple[dict[str, Any], _Reference]:
    """Final ELBO, gap and whether it closes, for one fit; the reference it was scored against.

    The first fit of a seed (F-VI) is its own reference.
    """
    draws = fit.elbo_draws(setup.eval_particles, seed=EVAL_SEED + seed)
    exact = None if setup.exact_elbo is None else float(setup.exact_elbo(fit))
    if reference is None:
        reference = _Reference(draws, exact)
    gap, gap_se = paired_gap(reference.draws, draws)
    elbo = float(np.mean(draws))
    record = {
        "elbo": elbo,
        "elbo_se": float(np.std(draws, ddof=1) / math.sqrt(draws.size)),
        "gap": gap,
        "gap_se": gap_se,
        "closed": closes(gap, gap_se, elbo),
    }
    if exact is not None:
        assert reference.exact is not None
        record |= {"exact_elbo": exact, "exact_gap": reference.exact - exact}
    return record, reference


def _run_seed(setup: Setup, seed: int, log: Log) -> tuple[list[pd.DataFrame], list[dict[str, Any]]]:
    """Fit every family for one seed; paths and per-fit records (gaps against this seed's F-VI)."""
    paths, records = [], []
    reference: _Reference | None = None
    for spec in setup.families:
        fit = avi.fit(setup.model, *setup.args, seed=seed, **fit_options(setup, spec))
        score, reference = _score(setup, fit, seed, reference)
        path = _path(spec, seed, fit)
        paths.append(path)
        records.append(
            {
                "family": spec.label,
                "seed": seed,
                **score,
                "num_steps": fit.num_steps,
                "wall_time": float(path["wall_time"].iloc[-1]),
                "num_parameters": fit.num_parameters,
                **(setup.metrics(fit) if setup.metrics else {}),
            }
        )
        log(
            f"[{setup.name}] seed {seed} {spec.label}: ELBO {score['elbo']:.2f}, gap "
            f"{score['gap']:.3g} +- {score['gap_se']:.2g}, {fit.num_steps} steps in {fit.wall_time:.1f} s"
        )
    return paths, records


# --- aggregating over seeds ---------------------------------------------------------------------


def mean_stderr(stderrs: pd.Series) -> float:
    """Standard error of a mean over seeds of independent estimates with these stderrs."""
    return math.sqrt(float(np.sum(np.square(stderrs)))) / len(stderrs)


def expected(spec: FamilySpec) -> str:
    """The paper's finding as a verdict: "reference", "closed" or "open"."""
    if spec.expect_closed is None:
        return "reference"
    return "closed" if spec.expect_closed else "open"


def family_verdict(closed: pd.Series) -> str:
    """ "closed" when the fits close the gap in at least half of the seeds."""
    return "closed" if 2 * int(closed.sum()) >= len(closed) else "open"


def summarize(families: Sequence[FamilySpec], fits: pd.DataFrame) -> pd.DataFrame:
    """One row per family: ELBO, gap and verdict over seeds, medians to the criteria, agreement."""
    metric_columns = [c for c in fits.columns if c not in _FIT_COLUMNS]
    rows = []
    for spec in families:
        own = fits[fits["family"] == spec.label]
        verdict = "reference" if spec.expect_closed is None else family_verdict(own["closed"])
        row = {
            "family": spec.label,
            "expected": expected(spec),
            "paper": spec.paper,
            **spec.tags,
            "seeds": len(own),
            "num_parameters": int(own["num_parameters"].iloc[0]),
            "learning_rate": spec.learning_rate,
            "elbo": float(own["elbo"].mean()),
            "elbo_se": mean_stderr(own["elbo_se"]),
            "elbo_sd_seeds": float(own["elbo"].std(ddof=1)) if len(own) > 1 else math.nan,
            "gap": float(own["gap"].median()),
            "gap_se": float(own["gap_se"].median()),
            "closed_seeds": int(own["closed"].sum()),
            "verdict": verdict,
            "agrees": ""
            if verdict == "reference"
            else ("yes" if verdict == expected(spec) else "no"),
        }
        for criterion in ("1pct", "strict"):
            for quantity in ("steps", "time"):
                row[f"median_{quantity}_{criterion}"] = float(
                    np.median(own[f"{quantity}_{criterion}"])
                )
            row[f"reached_{criterion}"] = int(np.isfinite(own[f"steps_{criterion}"]).sum())
        row["strict_threshold"] = float(own["strict_threshold"].median())
        row.update({c: float(own[c].mean()) for c in metric_columns})
        rows.append(row)
    return pd.DataFrame(rows)


_FIT_COLUMNS = (
    "family", "seed", "elbo", "elbo_se", "gap", "gap_se", "closed", "num_steps", "wall_time",
    "num_parameters", "steps_1pct", "time_1pct", "steps_strict", "time_strict", "strict_threshold",
)  # fmt: skip


# --- one experiment -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """What a report needs to know about a run besides its tables."""

    name: str
    title: str
    size: str
    seeds: list[int]
    settings: str
    num_data: int
    exact: bool
    eval_particles: int
    reference_elbo: float
    strict_tolerance: float
    duration_s: float
    command: str = "avi reproduce"


@dataclass
class ExperimentResult:
    """The tables of one experiment's run."""

    info: RunInfo
    paths: pd.DataFrame
    fits: pd.DataFrame
    summary: pd.DataFrame
    claims: list[Claim]


def run_experiment(
    setup: Setup, size: str, seeds: Iterable[int], log: Log = lambda _: None
) -> ExperimentResult:
    """Fit every family of ``setup`` for every seed and score the fits.

    Args:
        setup: the experiment.
        size: the run size it was built at (recorded).
        seeds: optimisation seeds (the data are the setup's, the same for every seed).
        log: receives one line per fit.
    """
    seeds = [int(s) for s in seeds]
    start = time.perf_counter()
    paths, records = [], []
    for seed in seeds:
        seed_paths, seed_records = _run_seed(setup, seed, log)
        paths += seed_paths
        records += seed_records
    paths_table = pd.concat(paths, ignore_index=True)
    fits = pd.DataFrame(records)
    reference = float(fits.loc[fits["family"] == REFERENCE_LABEL, "elbo"].mean())
    tolerance = STRICT_NATS_PER_DATUM * setup.num_data
    criteria = pd.DataFrame(
        [
            {"seed": seed, "family": family, **convergence(path, reference, tolerance)}
            for (seed, family), path in paths_table.groupby(["seed", "family"])
        ]
    )
    fits = fits.merge(criteria, on=["seed", "family"], validate="one_to_one")
    summary = summarize(setup.families, fits)
    info = RunInfo(
        name=setup.name,
        title=setup.title,
        size=size,
        seeds=seeds,
        settings=setup.settings,
        num_data=setup.num_data,
        exact=setup.exact_elbo is not None,
        eval_particles=setup.eval_particles,
        reference_elbo=reference,
        strict_tolerance=tolerance,
        duration_s=time.perf_counter() - start,
    )
    return ExperimentResult(info, paths_table, fits, summary, setup.check_claims(summary, fits))


# --- files --------------------------------------------------------------------------------------

EXTRA_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "linear": (("exact_gap", "exact gap (mean)"),),
    "deep_generative": (("train_mse", "train MSE"), ("test_mse", "test MSE")),
    "hmm": (
        ("exact_gap", "exact gap (mean)"),
        ("closed_form_gap", "closed-form gap of the family's optimum"),
        ("gap_to_optimum", "exact gap to the F-VI optimum"),
    ),
}
"""Experiment-specific summary columns shown in the report: (column, heading)."""


def _hmm_closed_form_curve(info: RunInfo) -> dict[int, float]:
    x = hmm.data(info.num_data)
    return {w: hmm.window_optimum_gap(x, w) for w in range(7)}


def save_figures(result: ExperimentResult, directory: Path) -> list[Path]:
    """Write the experiment's figures as PNG files; return their paths."""
    info = result.info
    order = list(result.summary["family"])
    written = [
        plots.elbo_paths(
            result.paths,
            order,
            info.reference_elbo,
            {
                "1% criterion": PAPER_FRACTION * abs(info.reference_elbo),
                "strict criterion (median over fits)": float(
                    result.fits["strict_threshold"].median()
                ),
            },
            info.title,
            directory / "elbo_paths.png",
        ),
        plots.wall_time_boxes(result.fits, order, info.title, directory / "wall_time.png"),
    ]
    if info.name == "saw":
        written.append(plots.saw_comparison(result.summary, directory / "saw_comparison.png"))
    if info.name == "hmm":
        curve = _hmm_closed_form_curve(info)
        written.append(plots.hmm_gap(result.summary, curve, directory / "hmm_gap.png"))
    return written


def _agreement(agrees: bool | None) -> str:
    return {True: "yes", False: "no", None: "cannot tell"}[agrees]


def save(result: ExperimentResult, directory: Path) -> None:
    """Write paths.csv, fits.csv, summary.csv, claims.csv, run.json and the figures."""
    directory.mkdir(parents=True, exist_ok=True)
    result.paths.to_csv(directory / "paths.csv", index=False, float_format="%.9g")
    result.fits.to_csv(directory / "fits.csv", index=False)
    result.summary.to_csv(directory / "summary.csv", index=False)
    claims = pd.DataFrame(
        [
            {"paper": c.paper, "measured": c.measured, "agrees": _agreement(c.agrees)}
            for c in result.claims
        ],
        columns=["paper", "measured", "agrees"],
    )
    claims.to_csv(directory / "claims.csv", index=False)
    (directory / "run.json").write_text(json.dumps(asdict(result.info), indent=2) + "\n")
    save_figures(result, directory)


def _read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"agrees": str, "expected": str, "verdict": str}).fillna(
        {"agrees": ""}
    )


# --- the report ---------------------------------------------------------------------------------


def _criterion(row: pd.Series, quantity: str, criterion: str) -> str:
    median = row[f"median_{quantity}_{criterion}"]
    text = (
        "never"
        if not math.isfinite(median)
        else (f"{median:.0f}" if quantity == "steps" else f"{median:.3g}")
    )
    return f"{text} ({row[f'reached_{criterion}']}/{row['seeds']})"


def _number(value: float) -> str:
    return "n/a" if pd.isna(value) else f"{value:.4g}"


def _gap_cell(row: pd.Series, num_data: int) -> str:
    if row["verdict"] == "reference":
        return "0 (reference)"
    return f"{row['gap']:.3g} +- {row['gap_se']:.2g} ({row['gap'] / num_data:.1e}/datum)"


def _family_table(name: str, summary: pd.DataFrame, num_data: int) -> list[str]:
    extras = EXTRA_COLUMNS.get(name, ())
    header = [
        "family", "ELBO +- se", "gap to F-VI +- se", "closed in seeds", "verdict",
        "iterations to 1%", "s to 1%", "s to strict", "parameters", *(h for _, h in extras),
        "paper's finding", "agrees",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        reference = row["verdict"] == "reference"
        cells = [
            row["family"],
            f"{row['elbo']:.2f} +- {row['elbo_se']:.2g}",
            _gap_cell(row, num_data),
            "" if reference else f"{row['closed_seeds']}/{row['seeds']}",
            "" if reference else row["verdict"],
            _criterion(row, "steps", "1pct"),
            _criterion(row, "time", "1pct"),
            _criterion(row, "time", "strict"),
            f"{int(row['num_parameters']):,}",
            *(_number(row[c]) for c, _ in extras),
            row["paper"],
            row["agrees"],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _figure_links(name: str, directory: Path) -> list[str]:
    return [f"![{png.stem}]({name}/{png.name})" for png in sorted(directory.glob("*.png"))]


def _experiment_section(directory: Path) -> tuple[list[str], list[str], int, int]:
    """Markdown of one experiment; its disagreements; checks agreeing; checks made."""
    info = json.loads((directory / "run.json").read_text())
    summary = _read_table(directory / "summary.csv")
    claims = _read_table(directory / "claims.csv")
    evaluation = (
        f"Monte Carlo, {info['eval_particles']:,} draws, common random numbers across families"
        + ("; the exact ELBO (closed form) of every fit is recorded too" if info["exact"] else "")
    )
    reference = info["reference_elbo"]
    lines = [
        f"## {info['title']}",
        "",
        (
            f"- Run: `{info.get('command', 'avi reproduce')}`: size `{info['size']}`, seeds "
            f"{info['seeds']}, {info['duration_s']:.0f} s (fits and scoring)."
        ),
        f"- Settings: {info['settings']}.",
        f"- Final ELBO: {evaluation}.",
        (
            f"- F-VI's converged ELBO E* = {reference:.2f}; the 1% criterion is ELBO >= E* - "
            f"{PAPER_FRACTION * abs(reference):.3g}; the strict one ELBO >= E* - "
            f"{info['strict_tolerance']:.3g} (1e-4 nats per datum) or the path's noise floor if "
            f"larger (median {summary['strict_threshold'].median():.3g})."
        ),
        "",
        *_family_table(info["name"], summary, info["num_data"]),
        "",
        "Findings beyond single families:",
        "",
    ]
    lines += [
        f"- **{row['agrees']}** — paper: {row['paper']}; this run: {row['measured']}."
        for _, row in claims.iterrows()
    ]
    lines += ["", *_figure_links(info["name"], directory), ""]
    disagreements = [
        f"{info['name']}: {row['family']} — paper: {row['paper']}; run: {row['verdict']} "
        f"(gap {_gap_cell(row, info['num_data'])})"
        for _, row in summary[summary["agrees"] == "no"].iterrows()
    ] + [
        f"{info['name']}: {row['paper']} — run: {row['measured']}"
        for _, row in claims[claims["agrees"] == "no"].iterrows()
    ]
    checked = int((summary["agrees"] != "").sum()) + int((claims["agrees"] != "cannot tell").sum())
    agreeing = int((summary["agrees"] == "yes").sum()) + int((claims["agrees"] == "yes").sum())
    return lines, disagreements, agreeing, checked


_DEFINITIONS = """\
How to read it. Each family is fitted once per seed with the settings listed (the data are the
same for every seed). *Gap to F-VI*: F-VI's final ELBO minus the family's, from the same Monte
Carlo draws (common random numbers) against the same seed's F-VI fit; shown as the median over
seeds +- the median standard error, and per datum (to set beside the strict criterion's 1e-4
nats per datum). A fit *closes* the gap when the gap is at most 2 standard errors (within Monte
Carlo error); the verdict is **closed** when the fits close it in at least half of the seeds,
**open** otherwise. *Iterations / s to 1%*: median over seeds of the first iteration (wall time,
compilation excluded) whose 20-iteration mean ELBO is within 1% of F-VI's converged ELBO (the
paper's criterion); *strict*: within 1e-4 nats per datum (or the path's noise floor). "never"
when not reached in most seeds; (k/S) counts the seeds that reached it. *Agrees* compares the
verdict, computed from this run, with the paper's finding.
"""


def write_report(out: Path) -> Path:
    """Write ``out/REPORT.md`` from every experiment directory present in ``out``."""
    directories = [
        out / name for name in registry.EXPERIMENTS if (out / name / "run.json").is_file()
    ]
    sections, overview, disagreements = [], [], []
    for directory in directories:
        lines, disagree, agreeing, checked = _experiment_section(directory)
        info = json.loads((directory / "run.json").read_text())
        sections += lines
        disagreements += disagree
        overview.append(
            f"| {info['name']} | {info['size']} | {len(info['seeds'])} | {info['duration_s']:.0f} "
            f"| {agreeing} of {checked} |"
        )
    total = sum(json.loads((d / "run.json").read_text())["duration_s"] for d in directories)
    lines = [
        "# Reproduction: Margossian and Blei (2024), Amortized Variational Inference: When and Why?",
        "",
        (
            f"Written by `avi reproduce` from the runs in this directory: {total:.0f} s of "
            "experiments in all."
        ),
        "",
        "| experiment | size | seeds | seconds | checks agreeing with the paper |",
        "|---|---|---|---|---|",
        *overview,
        "",
        "Disagreements with the paper:" if disagreements else "No disagreement with the paper.",
        "",
        *(f"- {d}" for d in disagreements),
        "",
        _DEFINITIONS,
        *sections,
    ]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path


# --- the command --------------------------------------------------------------------------------


def reproduce(
    name: str,
    size: str = "full",
    seeds: int | None = None,
    out: str | Path = "reproduction",
    data: str | Path | None = None,
    log: Log = lambda _: None,
    command: str = "avi reproduce",
) -> Path:
    """Run experiment ``name`` (or ``all``), write its files under ``out`` and ``out/REPORT.md``.

    Every setup is built (and its data loaded) before the first fit, so bad input fails fast.

    Args:
        name: an experiment name or ``all``.
        size: run size: tiny, quick, medium or full (the paper's sizes).
        seeds: number of seeds, 0..seeds-1 (default by size: 10 for full).
        out: output directory.
        data: FashionMNIST IDX directory for the deep generative model.
        log: receives progress lines.
        command: the command line, quoted in the report.

    Returns:
        The path of REPORT.md.

    Raises:
        AviError: unknown name or size, a bad seed count, missing IDX files.
    """
    size = check_size(size)
    if seeds is None:
        seeds = DEFAULT_SEEDS[size]
    if not isinstance(seeds, int) or seeds < 1:
        raise AviError(f"seeds={seeds!r}: give a positive number of seeds.")
    out = Path(out)
    setups = [registry.build(n, size, data) for n in registry.names(name)]
    for setup in setups:
        result = run_experiment(setup, size, range(seeds), log)
        result.info = replace(result.info, command=command)
        save(result, out / setup.name)
        log(f"[{setup.name}] done in {result.info.duration_s:.0f} s -> {out / setup.name}")
    return write_report(out)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _command_line(args: argparse.Namespace) -> str:
    parts = ["avi reproduce", args.name, f"--size {args.size}"]
    parts += [f"--seeds {args.seeds}"] if args.seeds else []
    parts += [f"--out {args.out}"] + ([f"--data {args.data}"] if args.data else [])
    return " ".join(parts)


def _handle(args: argparse.Namespace) -> int:
    log: Log = (
        (lambda line: print(line, file=sys.stderr, flush=True))
        if args.progress
        else (lambda _: None)
    )
    try:
        report = reproduce(
            args.name, args.size, args.seeds, args.out, args.data, log, _command_line(args)
        )
    except AviError as error:
        print(f"avi reproduce: error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


def add_reproduce_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``avi reproduce NAME|all [--seeds S] [--quick] [--out DIR] [--data PATH]``."""
    parser = subparsers.add_parser(
        "reproduce",
        help="reproduce the paper's experiments: CSVs, figures and REPORT.md",
        description=(
            "Fit every family of the paper's experiments over seeds and write, per experiment, "
            "the ELBO paths, a summary, figures, and DIR/REPORT.md comparing the run with the "
            "paper's findings."
        ),
    )
    parser.add_argument(
        "name",
        metavar="NAME",
        choices=(*registry.EXPERIMENTS, registry.ALL),
        help=f"one of {', '.join(registry.EXPERIMENTS)}, or {registry.ALL}",
    )
    parser.add_argument(
        "--seeds",
        type=_positive_int,
        default=None,
        help="number of seeds (default: 10 at full size, 2 with --quick)",
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument(
        "--quick",
        dest="size",
        action="store_const",
        const="quick",
        help="small sizes: all five experiments in under 10 minutes on 2 cores",
    )
    sizes.add_argument(
        "--size", dest="size", choices=SIZES, help="run size (default full: the paper's sizes)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("reproduction"),
        metavar="DIR",
        help="output directory (default ./reproduction)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="PATH",
        help="directory of FashionMNIST's IDX files for the deep generative "
        "model (default: scikit-learn's digits)",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(size="full", handler=_handle)
