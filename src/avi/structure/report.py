"""The structure report: the verdict, the encoder's input offsets and the explanation.

The verdict follows the paper: a model whose local latents' optimal factors (Lemma 3.1) involve
only their own datum is simple hierarchical (Definition 3.3) and admits an ideal inference
function of the datum (Theorem 3.4); one whose factors depend on the data at fixed offsets admits
one of a window of data (the saw model's expanded domain, Remark 3.7 for the ends); coupled local
latents (as in a hidden Markov model) or dense dependencies admit none short of all the data
(Proposition 3.8). The explanation names the sites and the dependency that decided.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from avi.data.groups import GroupedModel
from avi.structure.dependencies import Edge, LocalWindow
from avi.structure.problem import Problem
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
        summaries: the data arrays (labels) through a global summary of which (mean, sd, sum)
            the model couples every datum to all the others: a minibatch changes that summary,
            so such a model must not be fitted on minibatches (:func:`refuse_minibatches`).
        dataless: the local latents whose optimal factor depends on no data (an encoder for
            them would have no input).
        verified_data: the number of data the verdict's evidence covers: N when all data were
            analysed, or when what the first k data showed was verified on all N
            (:mod:`avi.structure.beyond`); k when it was not, in which case the verdict is
            never "simple-hierarchical" nor "expanded-domain".
    """

    verdict: Verdict
    inputs: tuple[int, ...] | None
    explanation: str
    summaries: tuple[str, ...] = ()
    dataless: tuple[str, ...] = ()
    verified_data: int | None = None


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


def window_report(
    problem: Problem,
    windows: Sequence[LocalWindow],
    summaries: Mapping[tuple[str, str], set[str]] | None = None,
    siblings: Iterable[tuple[str, str]] = (),
) -> StructureReport:
    """The verdict for uncoupled local latents: dense, simple hierarchical or expanded domain.

    A global summary of a data array (``summaries``: (local, label) -> factors) is the same
    for every datum: it acts as a global parameter fixed by the data, so it is a global
    influence (Theorem 3.4) and the encoder of the window can represent it. Local latents
    sharing a factor at the same datum (``siblings``, w_n in the prior of z_n) depend on the
    data each other's optimal factor depends on (Lemma 3.1).
    """
    summaries = dict(summaries or {})
    informed = _informed(windows, summaries, siblings)
    dense = [w for w in windows if w.problem is not None]
    if dense:
        details = "; ".join(f"local latent '{w.local}' {w.problem}" for w in dense)
        return StructureReport(
            "not-amortizable",
            None,
            f"{_scope(problem)} No local latent is coupled to another datum's, but {details}. "
            "Its optimal factor (Lemma 3.1) then depends on the data through no fixed window, "
            "as in a dense hierarchical model: no inference function of a strict subset of the "
            f"data is ideal (Theorem 3.4, Proposition 3.8).{_limit(problem)} Fit it with "
            "avi.Factorized().",
        )
    details = "; ".join(_links_phrase(problem, w, informed.get(w.local, ())) for w in windows)
    dataless = tuple(w.local for w in windows if w.local not in informed)
    extra = _summary_phrase(problem, summaries) + _dataless_phrase(dataless)
    labels = tuple(sorted({label for _, label in summaries}))
    inputs = tuple(sorted({0} | {offset for w in windows for _, offset in w.links}))
    if inputs == (0,):
        return StructureReport(
            "simple-hierarchical",
            inputs,
            f"{_scope(problem)} Each local latent's optimal factor (CAVI, Lemma 3.1) involves "
            f"only its own datum and the globals: {details}; no local latent shares a factor "
            "with another datum's, and no distribution depends on the datum's position. The "
            "model is simple hierarchical (Definition 3.3), so by Theorem 3.4 an ideal "
            "inference function of the datum alone exists: avi.Amortized(encoder) can close the "
            f"amortization gap.{extra}",
            labels,
            dataless,
        )
    return StructureReport(
        "expanded-domain",
        inputs,
        f"{_scope(problem)} {details}; no local latent is coupled to another datum's. The "
        "model is not simple hierarchical, so no inference function of the datum alone is "
        "ideal (Theorem 3.4), but each optimal factor (Lemma 3.1) depends on the data at fixed "
        f"offsets, so an ideal function of the window {inputs} exists, as for the paper's saw "
        f"model: use avi.Amortized(encoder, inputs=avi.Window(offsets={inputs})). Data at the "
        f"ends lack part of the window and keep their own factors (Remark 3.7).{extra}",
        labels,
        dataless,
    )


def position_report(
    problem: Problem, offsets: tuple[int, ...], pair: tuple[int, int]
) -> StructureReport:
    """The verdict when the model treats data differently by their position (not exchangeable)."""
    n, m = pair
    window = "datum" if offsets == (0,) else f"window of offsets {offsets}"
    return StructureReport(
        "not-amortizable",
        None,
        f"{_scope(problem)} The model depends on the datum's position: swapping data {n} and "
        f"{m} (each {window}, with its local latents) changes the optimal factor of the one "
        "moved, so the model computes something from the index n itself (jnp.arange over the "
        "plate, a mask, a trend, a scale or noise that varies with n). Such a model is not "
        "exchangeable, hence not simple hierarchical (Definition 3.3): two data with equal "
        "values at different positions need different factors, and no inference function of "
        "the data alone is ideal (Theorem 3.4). Fix: pass the position, or what the model "
        "computes from it, as a per-datum argument (e.g. model(x, index=jnp.arange(N)) with "
        "the index used inside the plate): the encoder then sees it and the model becomes "
        "simple hierarchical.",
    )


def unseen_report(
    problem: Problem, unseen: Mapping[tuple[str, str], set[str]]
) -> StructureReport:
    """The verdict when a local latent depends, datum by datum, on data outside the plate."""
    details = join(
        [
            f"'{local}' depends on {label} {_through(problem, local, terms)}"
            for (local, label), terms in sorted(unseen.items())
        ]
    )
    return StructureReport(
        "not-amortizable",
        None,
        f"{_scope(problem)} {details}, which has no axis along plate '{problem.plate}': each "
        "datum's optimal factor (Lemma 3.1) depends on its own part of those data, which an "
        "encoder of the plate's per-datum data never sees, so no inference function of them "
        "is ideal (Theorem 3.4). Fix: choose the plate those data live in, group them by this "
        "plate (avi.fit(..., groups=...)), or pass per-datum summaries of them as arguments "
        "along the plate; else fit with avi.Factorized().",
    )


def beyond_report(
    problem: Problem, report: StructureReport, verified: bool, reason: str, probes: int
) -> StructureReport:
    """The prefix's amortizable ``report`` once tested on all the data (:mod:`~.beyond`).

    Verified, it stands for all N data. Otherwise the first k data alone cannot support it
    (a lag longer than k, or anything past the k-th datum, would be missed): the verdict is
    "not-amortizable", and the explanation says what the prefix showed and why it was not
    verified beyond k data.
    """
    k, total = problem.size, problem.num_data
    if verified and k == total:
        return dataclasses.replace(report, verified_data=total)
    if k == total:
        return StructureReport(
            "not-amortizable",
            None,
            f"{_scope(problem)} The derivatives show a dependence confined to the window "
            f"{report.inputs}, but {reason.removeprefix('beyond them, ')}: the model also "
            "depends on data outside it in a way derivatives do not show (a threshold or a "
            "comparison on integer data), so no fixed window of data is known to suffice and "
            "no inference function of it is known to be ideal (Theorem 3.4). Fit it with "
            "avi.Factorized().",
            report.summaries,
            report.dataless,
            k,
        )
    if verified:
        return dataclasses.replace(
            report,
            explanation=f"{report.explanation} What the first {k} data showed was verified on "
            f"all {total}: at {probes} data spread over the whole range, permuting the data "
            "(and local latents) outside each one's window leaves its optimal factor unchanged, "
            "and exchanging the windows of disjoint pairs of data exchanges their factors.",
            verified_data=total,
        )
    found = (
        "simple hierarchical (an ideal inference function of the datum)"
        if report.verdict == "simple-hierarchical"
        else f"an expanded domain (an ideal inference function of the window {report.inputs})"
    )
    return StructureReport(
        "not-amortizable",
        None,
        f"{_scope(problem)} On them the model looks {found}, but this was not verified beyond "
        f"{k} data: {reason}. avi.check does not call a model amortizable on a part of its data. "
        "Fit it with avi.Factorized(); if you know the model's dependence is confined to the "
        f"window {report.inputs}, avi.Amortized(encoder, inputs=avi.Window(offsets="
        f"{report.inputs})) is your call. (Details of the first {k} data: "
        f"{_body(report)})",
        report.summaries,
        report.dataless,
        k,
    )


def _body(report: StructureReport) -> str:
    """The explanation without its opening sentence on the plate."""
    head, _, rest = report.explanation.partition("data. ")
    return rest or head


def _summary_phrase(problem: Problem, summaries: Mapping[tuple[str, str], set[str]]) -> str:
    """The sentence on global summaries of the data, if any."""
    if not summaries:
        return ""
    parts = join(
        [
            f"'{local}' depends on a summary of all of {label} (such as its mean or sd) "
            f"{_through(problem, local, terms)}"
            for (local, label), terms in sorted(summaries.items())
        ]
    )
    return (
        f" Besides, {parts}: a statistic of the whole data set is the same for every datum, "
        "so it acts as a global influence (a global fixed by the data) and the encoder can "
        "represent it. It changes with the data set, though: do not fit this model on "
        "minibatches (compute the summary once and pass it as an argument instead), and new "
        "data's posteriors assume the training data's summary."
    )


def _dataless_phrase(dataless: Sequence[str]) -> str:
    """The sentence on local latents whose optimal factor depends on no data."""
    if not dataless:
        return ""
    names = join([f"'{n}'" for n in dataless])
    return (
        f" {names} depend{'s' if len(dataless) == 1 else ''} on no data at all: the optimal "
        "factor is the same for every datum (a function of the globals only), so an encoder "
        "would have no input; fit it with avi.Constant() or avi.Factorized(), or check that "
        "the data plate is the one the observations live in."
    )


def _limit(problem: Problem) -> str:
    """The sentence on what the analysis did not examine."""
    if problem.size >= problem.num_data:
        return ""
    return (
        f" Dependencies reaching more than {problem.size} data away were not verified beyond "
        f"{problem.size} data (the analysis examined the first {problem.size} of "
        f"{problem.num_data})."
    )


def _scope(problem: Problem) -> str:
    """The explanation's opening: the plate, N, what was analysed, locals outside the plate."""
    head = f"Data plate '{problem.plate}' (N = {problem.num_data})"
    if isinstance(problem.model, GroupedModel):
        spec = problem.model.spec
        head = (
            f"Grouped data: plate '{problem.plate}' holds J = {problem.num_data} groups, each "
            f"group's datum its observations in plate '{spec.observation_plate}' (joined "
            f"through '{spec.index_name}')"
        )
    if problem.size < problem.num_data:
        head += f", analysed on its first {problem.size} data"
    else:
        head += ", analysed on all data"
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


def _informed(
    windows: Sequence[LocalWindow],
    summaries: Mapping[tuple[str, str], set[str]],
    siblings: Iterable[tuple[str, str]],
) -> dict[str, tuple[str, ...]]:
    """Local latents whose optimal factor depends on some data -> the local latents of the
    same datum it reaches them through (empty when it depends on data directly).

    A local latent with no data link of its own but a factor shared, at the same datum, with
    one that has (directly or again through siblings) depends on that datum's data too.
    """
    direct = {w.local for w in windows if w.links} | {local for local, _ in summaries}
    neighbours: dict[str, set[str]] = {}
    for a, b in siblings:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    informed: dict[str, tuple[str, ...]] = {name: () for name in direct}
    for w in windows:
        if w.local in informed:
            continue
        seen, frontier = {w.local}, [w.local]
        while frontier:
            frontier = [m for n in frontier for m in sorted(neighbours.get(n, ())) if m not in seen]
            seen |= set(frontier)
        through = tuple(sorted(seen & direct))
        if through:
            informed[w.local] = through
    return informed


def _links_phrase(problem: Problem, window: LocalWindow, through: Sequence[str] = ()) -> str:
    """What a local latent's optimal factor depends on, source by source."""
    if not window.links and through:
        names = join([f"'{n}'" for n in through])
        return (
            f"'{window.local}' depends on the data only through {names} of the same datum "
            "(a factor shared with it)"
        )
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
