"""``avi check`` and ``avi compare``: the structure verdict and the gap table from the shell.

    avi check FILE.py:NAME --data DATA.npz
    avi compare FILE.py:NAME --data DATA.npz [--families factorized,constant,mlp:16]

``FILE.py:NAME`` names a NumPyro model function in a Python file. ``DATA.npz`` (``numpy.savez``)
holds the model's arguments: the positional ones under ``arg0``, ``arg1``, ... and the keyword
ones under their names; 0-d arrays are passed as Python scalars.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from avi.analysis.compare import Comparison, compare
from avi.data.boundary import convert_arguments
from avi.errors import AviError
from avi.families import Amortized, Constant, Factorized, Family, Window
from avi.families.encoders import MLP, Polynomial
from avi.options import positive_int_text as _positive_int
from avi.structure import check

DEFAULT_FAMILIES = "factorized,constant,amortized"
_POSITIONAL = re.compile(r"arg(\d+)")


def load_model(spec: str) -> Callable[..., Any]:
    """The function NAME of the Python file FILE for ``spec = "FILE.py:NAME"``.

    Raises:
        AviError: no ':' in ``spec``, a missing file, a file that fails to import, or no
            callable NAME in it.
    """
    path_text, separator, name = spec.rpartition(":")
    if not separator or not path_text or not name:
        raise AviError(f"model {spec!r}: write FILE.py:NAME, e.g. my_model.py:model.")
    path = Path(path_text)
    if not path.is_file():
        raise AviError(f"model {spec!r}: no file {path}.")
    module_spec = importlib.util.spec_from_file_location(f"avi_user_model_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise AviError(f"model {spec!r}: {path} is not a Python file.")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # the user's file can raise anything; we add context
        raise AviError(
            f"model {spec!r}: importing {path} failed: {type(error).__name__}: {error}"
        ) from error
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise AviError(
            f"model {spec!r}: {path} has no function {name!r} (its functions: "
            f"{', '.join(found) or 'none'})."
        )
    return function


def load_data(path: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The model's (positional, keyword) arguments stored in an .npz file.

    Raises:
        AviError: a missing or unreadable file, or positional arguments with a hole
            (``arg0`` and ``arg2`` without ``arg1``).
    """
    if not Path(path).is_file():
        raise AviError(f"--data {path}: cannot read it as an .npz (or .npy) file: no such file.")
    try:
        with open(path, "rb") as handle:  # numpy leaves its own handle open on a bad zip
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.ndarray):  # a .npy file: the model's only argument
                return (loaded,), {}
            with loaded as stored:
                arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        if "pickled" in str(error):
            error = ValueError("it is not a numpy file (a text file or a pickle?)")
        raise AviError(
            f"--data {path}: cannot read it as an .npz (or .npy) file ({type(error).__name__}: "
            f"{error}). Write the model's arguments with numpy.savez(path, arg0=x, y=y) (or one "
            "array with numpy.save); text files and pickles are not read."
        ) from error
    values = {k: v.item() if v.ndim == 0 else v for k, v in arrays.items()}
    positions = {int(m.group(1)): k for k in values if (m := _POSITIONAL.fullmatch(k))}
    if sorted(positions) != list(range(len(positions))):
        raise AviError(
            f"--data {path}: positional arguments must be arg0, arg1, ... without gaps; "
            f"found {', '.join(positions[i] for i in sorted(positions))}."
        )
    args = tuple(values[positions[i]] for i in range(len(positions)))
    kwargs = {k: v for k, v in values.items() if k not in positions.values()}
    return args, kwargs


def parse_window(text: str | None) -> Window | None:
    """``"-1,0"`` -> ``Window(offsets=(-1, 0))``; None -> None.

    Raises:
        AviError: not a comma-separated list of integers.
    """
    if text is None:
        return None
    try:
        return Window(offsets=tuple(int(part) for part in text.split(",")))
    except ValueError as error:
        raise AviError(
            f"--window {text!r}: give comma-separated integer offsets, e.g. -1,0."
        ) from error


def parse_family(token: str, window: Window | None) -> Family:
    """One family of ``--families``: factorized, constant, amortized, mlp:WIDTH, poly:DEGREE.

    Raises:
        AviError: an unknown token or a bad number.
    """
    kind, _, number = token.strip().lower().partition(":")
    try:
        if kind == "factorized" and not number:
            return Factorized()
        if kind == "constant" and not number:
            return Constant()
        if kind == "amortized" and not number:
            return Amortized(inputs=window)
        if kind == "mlp" and number:
            return Amortized(MLP(width=int(number)), window)
        if kind in ("poly", "polynomial") and number:
            return Amortized(Polynomial(degree=int(number)), window)
    except ValueError as error:
        raise AviError(f"--families: {token!r} needs an integer after ':'.") from error
    raise AviError(
        f"--families: unknown family {token!r}; use factorized, constant, amortized, mlp:WIDTH "
        "or poly:DEGREE, separated by commas."
    )


def parse_families(text: str, window: Window | None) -> dict[str, Family]:
    """``--families`` as name -> family (the tokens are the names)."""
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise AviError(f"--families {text!r}: name at least one family.")
    return {token: parse_family(token, window) for token in tokens}


def _check(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    model_args, model_kwargs = convert_arguments(*load_data(args.data))
    report = check(model, *model_args, plate=args.plate, **model_kwargs)
    print(f"verdict: {report.verdict}")
    print(f"encoder inputs (offsets): {report.inputs}")
    print(report.explanation)
    return 0


def _compare(args: argparse.Namespace) -> int:
    figures = None if args.figures is None else Path(args.figures)
    if figures is not None and figures.exists() and not figures.is_dir():
        raise AviError(f"--figures {figures}: it is a file; give a folder for the figures.")
    model = load_model(args.model)
    model_args, model_kwargs = load_data(args.data)
    families = parse_families(args.families, parse_window(args.window))
    given = {"num_steps": args.num_steps, "max_steps": args.max_steps, "plate": args.plate}
    options = {k: v for k, v in given.items() if v is not None}
    comparison = compare(
        model,
        *model_args,
        families=families,
        seeds=args.seeds,
        eval_particles=args.eval_particles,
        tolerance=args.tolerance,
        progress=args.progress,
        **options,
        **model_kwargs,
    )
    if comparison.added_reference:
        name = comparison.reference
        print(f"No family is factorized: added avi.Factorized() as the reference {name!r}.")
    summary = comparison.summary()
    notes = summary.pop("note")
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for family, note in zip(summary["family"], notes, strict=True):
        if note:
            print(f"note on {family}: {note}")
    print(
        f"gap: ELBO of {comparison.reference} minus the family's, paired draws. Per seed: "
        f"closed when |gap| <= 2 standard errors + {args.tolerance:g} nats, open above, "
        "'reference not converged' below (Prop. 2.1); over seeds: their common verdict, else "
        "'seeds disagree'."
    )
    if figures is not None:
        _save_figures(comparison, figures)
    return 0


def _save_figures(comparison: Comparison, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    comparison.plot_elbo().savefig(directory / "elbo.png", dpi=110)
    for name in comparison.families:
        if name != comparison.reference:
            target = directory / f"per_datum_gaps_{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
            comparison.plot_per_datum_gaps(name).savefig(target, dpi=110)
    print(f"figures written to {directory}")


def _handled(
    command: str, handler: Callable[[argparse.Namespace], int]
) -> Callable[[argparse.Namespace], int]:
    """``handler`` with errors a user causes printed as one line and exit status 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except AviError as error:
            print(f"avi {command}: error: {error}", file=sys.stderr)
            return 2

    return run


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="FILE.py:NAME", help="the model function NAME in FILE.py")
    parser.add_argument(
        "--data",
        required=True,
        metavar="DATA.npz",
        help="the model's arguments: arg0, arg1, ... positional, others by name",
    )
    parser.add_argument("--plate", default=None, help="name of the data plate, if ambiguous")


def add_analysis_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``avi check`` and ``avi compare``."""
    check_parser = subparsers.add_parser(
        "check",
        help="can amortized VI match factorized VI on this model? (Theorem 3.4)",
        description="Print avi.check's verdict, the encoder's input offsets and the explanation.",
    )
    _model_arguments(check_parser)
    check_parser.set_defaults(handler=_handled("check", _check))

    compare_parser = subparsers.add_parser(
        "compare",
        help="fit several families and print the amortization-gap table",
        description=(
            "Fit each family (plus F-VI if none is factorized) and print avi.analysis.compare's summary."
        ),
    )
    _model_arguments(compare_parser)
    compare_parser.add_argument(
        "--families",
        default=DEFAULT_FAMILIES,
        help="comma-separated: factorized, constant, amortized, mlp:WIDTH, poly:DEGREE "
        f"(default {DEFAULT_FAMILIES})",
    )
    compare_parser.add_argument(
        "--window",
        default=None,
        metavar="OFFSETS",
        help="encoder input window for the amortized families, e.g. --window=-1,0",
    )
    compare_parser.add_argument("--seeds", type=_positive_int, default=1)
    compare_parser.add_argument(
        "--num-steps",
        type=_positive_int,
        default=None,
        help="fixed steps per fit (default: the stop rule)",
    )
    compare_parser.add_argument(
        "--max-steps",
        type=_positive_int,
        default=None,
        help="step cap of the stop rule (default: avi.fit's)",
    )
    compare_parser.add_argument(
        "--eval-particles", type=_positive_int, default=1000, help="draws of each final ELBO"
    )
    compare_parser.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        metavar="NATS",
        help="gap forgiven beyond 2 standard errors in the verdicts",
    )
    compare_parser.add_argument(
        "--figures",
        default=None,
        metavar="DIR",
        help="also write elbo.png and per-datum gap histograms to DIR",
    )
    compare_parser.add_argument("--no-progress", dest="progress", action="store_false")
    compare_parser.set_defaults(handler=_handled("compare", _compare))
