"""``REPORT.md``: the run of every experiment in an output directory, set beside the paper.

Written from the files alone (run.json, summary.csv, claims.csv and the figures of each
experiment directory), so that it covers every experiment run into the directory so far.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from avi.paper.experiments import registry
from avi.paper.reproduce.files import read_info, read_table
from avi.paper.reproduce.output import written_by_us
from avi.paper.reproduce.scoring import PAPER_FRACTION

_DEFINITIONS = """\
How to read it. Each family is fitted once per seed with the settings listed (the data are the
same for every seed). *Gap to F-VI*: F-VI's final ELBO minus the family's, from the same Monte
Carlo draws (common random numbers) against the same seed's F-VI fit; shown as the median over
seeds +- the median standard error, and per datum (to set beside the strict criterion's 1e-4
nats per datum). A fit's verdict is two-sided: *closed* when |gap| is at most 2 standard errors
plus 1e-4 nats per datum (Monte Carlo error and the optimisation error of a fixed budget; 0 for
the HMM, whose fits reach their closed-form optima more closely than its smallest gap), *open*
above, *reference not converged* below (Prop. 2.1 forbids a
family inside F-VI's from beating F-VI at its optimum). Where a fit beat the seed's F-VI fit,
F-VI was first refined from the best such fit and every fit of the seed scored against the
refinement when it scored higher (the reference's "lifted" cell: nats gained, mean over
seeds). The family's verdict is its seeds' common verdict, *reference not converged* if any
seed says so, else *seeds disagree*. *Iterations / s to 1%*: median over seeds of the first iteration (wall time,
compilation excluded) whose 20-iteration mean ELBO is within 1% of F-VI's converged ELBO (the
paper's criterion); *strict*: within 1e-4 nats per datum (or the path's noise floor). "never"
when not reached in most seeds; (k/S) counts the seeds that reached it. *Agrees* compares the
verdict, computed from this run, with the paper's finding.
"""


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
        lift = row.get("reference_lift", 0.0)
        return "0 (reference)" + (f"; lifted {lift:.3g} nats" if lift > 0 else "")
    return f"{row['gap']:.3g} +- {row['gap_se']:.2g} ({row['gap'] / num_data:.1e}/datum)"


def family_table(name: str, summary: pd.DataFrame, num_data: int) -> list[str]:
    """Markdown rows of the family table; the experiment's own columns come from its entry."""
    extras = registry.entry(name).report_columns
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


def _heading(info: dict, summary: pd.DataFrame) -> list[str]:
    """The section's title and the run's settings, evaluation and criteria."""
    evaluation = (
        f"Monte Carlo, {info['eval_particles']:,} draws, common random numbers across families"
        + ("; the exact ELBO (closed form) of every fit is recorded too" if info["exact"] else "")
    )
    reference = info["reference_elbo"]
    return [
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
    ]


def experiment_section(directory: Path) -> tuple[list[str], list[str], int, int]:
    """Markdown of one experiment; its disagreements; checks agreeing; checks made."""
    info = read_info(directory)
    summary = read_table(directory / "summary.csv")
    claims = read_table(directory / "claims.csv")
    lines = [
        *_heading(info, summary),
        *family_table(info["name"], summary, info["num_data"]),
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


def write_report(out: Path) -> Path:
    """Write ``out/REPORT.md`` from every experiment directory present in ``out``."""
    directories = [out / name for name in registry.EXPERIMENTS if written_by_us(out / name, name)]
    sections, overview, disagreements, total = [], [], [], 0.0
    for directory in directories:
        try:
            lines, disagree, agreeing, checked = experiment_section(directory)
            info = read_info(directory)
        except (OSError, ValueError, KeyError, TypeError) as error:  # a damaged or old folder
            sections += [
                f"## {directory.name}",
                "",
                f"Not read: {type(error).__name__}: {error}.",
                "",
            ]
            continue
        sections += lines
        disagreements += disagree
        total += info["duration_s"]
        overview.append(
            f"| {info['name']} | {info['size']} | {len(info['seeds'])} | {info['duration_s']:.0f} "
            f"| {agreeing} of {checked} |"
        )
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
