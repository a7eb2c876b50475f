"""``avi infer``: the posterior of new data from a saved fit, to an .npz or .csv file.

    avi infer DIR --model FILE.py:NAME --data NEW --out posterior.csv

For every local latent site and every datum of NEW: the mean, standard deviation and 5%, 50%
and 95% quantiles of the variational posterior, in the model's space, from ``--num-samples``
draws (seeded, so a second run writes the same numbers). In a .csv, one row per datum and
columns ``SITE_mean``, ``SITE_sd``, ... (``SITE[i]_mean`` for a vector site); in an .npz,
arrays ``SITE/mean`` ... with the data axis first. Data lacking a neighbour of the encoder's
Window have no posterior (NaN, an empty .csv cell).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from avi.cli.analysis import model_and_data
from avi.cli.common import add_model_arguments, handled, positive_int, seed
from avi.cli.inputs import load_function
from avi.data.boundary import convert_arguments
from avi.errors import AviError
from avi.result import Fit
from avi.saving import load
from avi.saving.files import read_description
from avi.saving.specs import has_user_encoder

STATISTICS = ("mean", "sd", "q05", "q50", "q95")
FORMATS = (".npz", ".csv")


def posterior_summaries(
    result: Fit, args: tuple, kwargs: dict, num_samples: int, seed_value: int
) -> dict[str, dict[str, np.ndarray]]:
    """site -> statistic -> array (N, *site shape) of every local site's posterior."""
    draws = result.sample(num_samples, *args, seed=seed_value, **kwargs)
    summaries = {}
    for site in result.traced.layout.locals:
        values = np.moveaxis(draws[site.name], site.plate_axis + 1, 1)
        low, middle, high = np.quantile(values, [0.05, 0.5, 0.95], axis=0)
        summaries[site.name] = {
            "mean": values.mean(axis=0),
            "sd": values.std(axis=0, ddof=1),
            "q05": low,
            "q50": middle,
            "q95": high,
        }
    return summaries


def write_npz(summaries: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    np.savez(
        path, **{f"{site}/{k}": v for site, stats in summaries.items() for k, v in stats.items()}
    )


def write_csv(summaries: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    columns = {}
    for site, stats in summaries.items():
        for statistic, values in stats.items():
            flat = values.reshape(values.shape[0], -1)
            for i in range(flat.shape[1]):
                index = (
                    ""
                    if values.ndim == 1
                    else "[" + ",".join(map(str, np.unravel_index(i, values.shape[1:]))) + "]"
                )
                columns[f"{site}{index}_{statistic}"] = flat[:, i]
    pd.DataFrame(columns).to_csv(path, index_label="datum")


def _infer(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise AviError(f"--out {out}: end it in .npz or .csv (the format written).")
    if out.is_dir():
        raise AviError(f"--out {out}: it is a folder; give a file name ending in .npz or .csv.")
    encoder = None
    if args.encoder is not None:
        encoder = load_function(args.encoder, "--encoder")()
    elif has_user_encoder(read_description(args.fit)["family"]):
        raise AviError(
            f"{args.fit}: the fit's encoder is your own equinox Module, whose code is not saved: "
            "add --encoder FILE.py:NAME, a function NAME() returning a module of the same class "
            "and sizes (e.g. return MyEncoder(..., key=jax.random.PRNGKey(0)))."
        )
    model, arguments = model_and_data(args)
    result = load(args.fit, model, encoder=encoder)
    model_args, model_kwargs = convert_arguments(*arguments)
    summaries = posterior_summaries(result, model_args, model_kwargs, args.num_samples, args.seed)
    if not summaries:
        raise AviError("the model has no local latent site: there is nothing per datum to infer.")
    (write_csv if out.suffix.lower() == ".csv" else write_npz)(summaries, out)
    first = next(iter(summaries.values()))["mean"]
    missing = int(np.isnan(first.reshape(first.shape[0], -1)).any(axis=1).sum())
    if missing:
        print(
            f"avi infer: {missing} datum(s) lack a neighbour of the encoder's Window and have no "
            "posterior (NaN): pass the preceding data too.",
            file=sys.stderr,
        )
    print(f"posterior of {first.shape[0]} data ({', '.join(summaries)}) written to {out}")
    return 0


def add_infer_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``avi infer``."""
    parser = subparsers.add_parser(
        "infer",
        help="posteriors of new data from a saved fit (one encoder pass)",
        description=(
            "Load the fit avi fit saved in DIR and write, for every datum of the new data and "
            "every local latent, the posterior mean, sd and 5%/50%/95% quantiles to --out "
            "(.csv: one row per datum; .npz: arrays SITE/mean, ...)."
        ),
        epilog="example: avi infer fitted --model my_model.py:model --data new.csv --out post.csv",
    )
    parser.add_argument("fit", metavar="DIR", help="the folder avi fit (or fit.save) wrote")
    add_model_arguments(parser, positional=False, plate=False)
    parser.add_argument(
        "--out", required=True, metavar="FILE", help="where to write: FILE.csv or FILE.npz"
    )
    parser.add_argument(
        "--num-samples",
        type=positive_int,
        default=1000,
        help="posterior draws behind the statistics (default 1000)",
    )
    parser.add_argument("--seed", type=seed, default=0, help="seed of the draws (default 0)")
    parser.add_argument(
        "--encoder",
        default=None,
        metavar="FILE.py:NAME",
        help="only for a fit with your own equinox encoder: a function NAME() returning a "
        "module of the same class and sizes (its weights are replaced by the saved ones)",
    )
    parser.set_defaults(handler=handled("infer", _infer))
