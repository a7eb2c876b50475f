"""The structure report: the verdict, the encoder's input offsets and the explanation.

The verdict follows the paper: a model whose local latents' optimal factors (Lemma 3.1) involve
only their own datum is simple hierarchical (Definition 3.3) and admits an ideal inference
function of the datum (Theorem 3.4); one whose factors depend on the data at fixed offsets admits
one of a window of data (the saw model's expanded domain, Remark 3.7 for the ends); coupled local
latents (as in a hidden Markov model) or dense dependencies admit none short of all the data
(Proposition 3.8). The explanation names the sites and the dependency that decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from avi.structure.dependencies import Edge, LocalWindow
from avi.structure.probes import WINDOW, design_for
from avi.structure.problem import SUB_SIZE, Problem
from avi.structure.wording import join, offsets_phrase

Verdict = Literal["simple-hierarchical", "expanded-domain", "not-amortizable"]


@dataclass(frozen=True)
class StructureReport:
    """What :func:`avi.check` found.

    Attributes:
        verdict: ``"simple-hierarchical"`` (an ideal inference function of the datum exists,
            Theorem 3.4), ``"expanded-domain"`` (one of a fixed window of data exists, as for the
            saw model) or ``"not-amortizable"`` (none short of all the data, Proposition 3.8).
        inputs: the offsets along the data plate the encoder needs, for
            ``avi.Window(offsets=inputs)``: ``(0,)`` for a simple hierarchical model, ``None``
            when the model is not amortizable.
        explanation: the sites and the dependency that decided, in the paper's terms.
    """

    verdict: Verdict
    inputs: tuple[int, ...] | None
    explanation: str


def no_locals_report(problem: Problem) -> StructureReport:
    """The verdict for a model whose latents are all global."""
    return StructureReport(
        "simple-hierarchical",
        (0,),
        f"{_scope(problem)} It holds no local latent: every latent is global and is fitted "
        "alike by amortized and factorized VI, so there is nothing to amortize and no "
        "amortization gap (trivially simple hierarchical, Definition 3.3).",
    )


def coupled_report(problem: Problem, edges: set[Edge]) -> StructureReport:
    """The verdict when local latents of different data are coupled (Proposition 3.8)."""
    groups: dict[tuple[str, str], list[Edge]] = {}
    for e in edges:
        groups.setdefault((e.local, e.source), []).append(e)
    details = [
        f"local latent '{local}' is coupled to '{other}' of other data at "
        f"{offsets_phrase(e.offset for e in group)} "
        f"{_through(problem, local, (e.term for e in group))}"
        for (local, other), group in sorted(groups.items())
    ]
    free = sorted(set(problem.locals) - {e.local for e in edges} - {e.source for e in edges})
    aside = (
        f" ({join([repr(n) for n in free])} alone would not be coupled, but one coupled local "
        "latent suffices.)"
        if free
        else ""
    )
    explanation = (
        f"{_scope(problem)} The model is not amortizable: {'; '.join(details)}.{aside} By "
        "Lemma 3.1 the optimal factor q(z_n) then depends on the factors of other data's local "
        "latents, so a datum's influence is neither global nor confined to its own latent "
        "(Theorem 3.4); as for the hidden Markov model, by Proposition 3.8 no inference function "
        "of a strict subset of the data is ideal. Fit it with avi.Factorized()."
    )
    return StructureReport("not-amortizable", None, explanation)


def window_report(problem: Problem, windows: Sequence[LocalWindow]) -> StructureReport:
    """The verdict for uncoupled local latents: dense, simple hierarchical or expanded domain."""
    dense = [w for w in windows if w.problem is not None]
    if dense:
        details = "; ".join(f"local latent '{w.local}' {w.problem}" for w in dense)
        return StructureReport(
            "not-amortizable",
            None,
            f"{_scope(problem)} No local latent is coupled to another datum's, but {details}. "
            "Its optimal factor (Lemma 3.1) then depends on the data through no fixed window, "
            "as in a dense hierarchical model: no inference function of a strict subset of the "
            "data is ideal (Theorem 3.4, Proposition 3.8). Fit it with avi.Factorized().",
        )
    details = "; ".join(_links_phrase(problem, w) for w in windows)
    inputs = tuple(sorted({0} | {offset for w in windows for _, offset in w.links}))
    if inputs == (0,):
        return StructureReport(
            "simple-hierarchical",
            inputs,
            f"{_scope(problem)} Each local latent's optimal factor (CAVI, Lemma 3.1) involves "
            f"only its own datum and the globals: {details}; no local latent shares a factor "
            "with another datum's. The model is simple hierarchical (Definition 3.3), so by "
            "Theorem 3.4 an ideal inference function of the datum alone exists: "
            "avi.Amortized(encoder) can close the amortization gap.",
        )
    return StructureReport(
        "expanded-domain",
        inputs,
        f"{_scope(problem)} {details}; no local latent is coupled to another datum's. The "
        "model is not simple hierarchical, so no inference function of the datum alone is "
        "ideal (Theorem 3.4), but each optimal factor (Lemma 3.1) depends on the data at fixed "
        f"offsets, so an ideal function of the window {inputs} exists, as for the paper's saw "
        f"model: use avi.Amortized(encoder, inputs=avi.Window(offsets={inputs})). Data at the "
        "ends lack part of the window and keep their own factors (Remark 3.7).",
    )


def _scope(problem: Problem) -> str:
    """The explanation's opening: the plate, N, what was analysed, locals outside the plate."""
    head = f"Data plate '{problem.plate}' (N = {problem.num_data})"
    if problem.size < problem.num_data:
        head += f", analysed on its first {problem.size} data"
    elif problem.size > SUB_SIZE:
        probes = join([str(p) for p in design_for(problem.size).probes])
        head += (
            ", analysed on all data (the model does not re-run on fewer data), probing data "
            f"{probes} within {WINDOW} neighbours"
        )
    head += "."
    for name in problem.disguised:
        head += (
            f" '{name}' is sampled outside the plate but has one coordinate per datum (axis "
            f"{problem.locals[name]}), so it is a local latent."
        )
    return head


def _term_phrase(problem: Problem, local: str, term: str) -> str:
    """The factor of the joint a site contributes, seen from the local latent ``local``."""
    kind = problem.sites[term].kind
    if term == local:
        return "its prior"
    if kind == "latent":
        return f"the prior of '{term}'"
    if kind == "factor":
        return f"the factor '{term}'"
    return f"the likelihood of '{term}'"


def _through(problem: Problem, local: str, terms: Iterable[str]) -> str:
    """'through its prior and the likelihood of 'x''."""
    return "through " + join([_term_phrase(problem, local, t) for t in sorted(set(terms))])


def _links_phrase(problem: Problem, window: LocalWindow) -> str:
    """What a local latent's optimal factor depends on, source by source."""
    if not window.links:
        return f"'{window.local}' depends on no data (only on the globals)"
    by_source: dict[str, list[tuple[int, frozenset[str]]]] = {}
    for (source, offset), terms in window.links.items():
        by_source.setdefault(source, []).append((offset, terms))
    parts = [
        f"{source} at {offsets_phrase(o for o, _ in links)} "
        f"({_through(problem, window.local, set().union(*(t for _, t in links)))})"
        for source, links in sorted(by_source.items())
    ]
    return f"'{window.local}' depends on {join(parts)}"
