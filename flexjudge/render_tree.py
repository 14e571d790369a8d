"""Terminal rendering of judgments as a rich tree: dimensions, criteria with score bars, winners, findings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flexjudge.checks import Finding

if TYPE_CHECKING:
    from rich.console import RenderableType

    from flexjudge.ranking import Ranking
    from flexjudge.schema import Judgment, PointwiseJudgment


def _bar(share: int, total: int = 10, width: int = 10) -> str:
    filled = round(width * share / total) if total else 0
    return "█" * filled + "░" * (width - filled)


def _who(winner: int | None) -> str:
    return "tie" if winner is None else f"candidate {winner}"


def _title(prompt: str) -> str:
    """The prompt the user gave, on one line: the tree's title. A judgment's own `prompt` is what the
    judge echoed (the released format asks for it), which a weak or random model gets wrong."""
    from rich.markup import escape

    line = " ".join(prompt.split())
    return escape(line if len(line) <= 80 else line[:79] + "…")


def judgment_tree(
    judgment: Judgment, findings: list[Finding], *, prompt: str | None = None
) -> RenderableType:
    """`prompt` (the prompt given to the judge) titles the tree; without it, the echoed prompt does."""
    from rich.markup import escape
    from rich.tree import Tree

    meta = judgment.meta
    how = ", ".join(
        x
        for x in (
            meta.model and f"model {meta.model}",
            meta.backend,
            "constrained" if meta.constrained else None,
        )
        if x
    )
    details = f"{judgment.modality}, {judgment.scoring}" + (f"; {escape(how)}" if how else "")
    root = Tree(f"[bold]{_title(judgment.prompt if prompt is None else prompt)}[/bold]  ({details})")
    for dim in judgment.dimensions:
        one, two = dim.totals
        title = f"[bold]{escape(dim.name)}[/bold] [dim]({dim.origin})[/dim]"
        branch = root.add(f"{title}  {one}:{two} -> [green]{_who(dim.winner)}[/green]")
        for crit in dim.criteria:
            scores = f"{crit.score_1:>2} {_bar(crit.score_1)} {_bar(crit.score_2)} {crit.score_2:<2}"
            leaf = branch.add(f"{scores}  {escape(crit.name)}")
            leaf.add(f"[dim]1: {escape(crit.evidence_1)}[/dim]")
            leaf.add(f"[dim]2: {escape(crit.evidence_2)}[/dim]")
    winner = f"[green]{_who(judgment.verdict.winner)}[/green]"
    verdict = root.add(f"[bold]Verdict: {winner}[/bold] [dim](by {meta.verdict_rule})[/dim]")
    if judgment.verdict.analysis:
        verdict.add(escape(judgment.verdict.analysis))
    if meta.swap is not None:
        agreed = sum(meta.swap.dimension_agreement.values())
        total = len(meta.swap.dimension_agreement)
        root.add(f"order swap: {agreed}/{total} dimensions agree; verdict {meta.swap.resolution}")
    _add_findings(root, findings)
    return root


def pointwise_tree(
    judgment: PointwiseJudgment, findings: list[Finding], *, prompt: str | None = None
) -> RenderableType:
    """`prompt` (the prompt given to the judge) titles the tree; without it, the echoed prompt does."""
    from rich.markup import escape
    from rich.tree import Tree

    low, high = judgment.scale.low, judgment.scale.high
    title = _title(judgment.prompt if prompt is None else prompt)
    root = Tree(f"[bold]{title}[/bold]  ({judgment.modality}, scale {low}..{high})")
    for dim in judgment.dimensions:
        branch = root.add(f"[bold]{escape(dim.name)}[/bold]  {dim.score} {_bar(dim.score - low, high - low)}")
        for crit in dim.criteria:
            bar = _bar(crit.score - low, high - low)
            branch.add(f"{crit.score:>2} {bar}  {escape(crit.name)}: [dim]{escape(crit.evidence)}[/dim]")
    root.add(f"[bold]Overall: {judgment.verdict.score}[/bold]  {escape(judgment.verdict.analysis)}")
    _add_findings(root, findings)
    return root


def ranking_tree(ranking: Ranking, *, prompt: str | None = None) -> RenderableType:
    """`prompt` (the prompt given to the judge) titles the tree."""
    from rich.tree import Tree

    title = "Ranking" if prompt is None else _title(prompt)
    root = Tree(f"[bold]{title}[/bold]  (ranked by pairwise win rate)")
    for place, candidate in enumerate(ranking.order, 1):
        rate = ranking.win_rate[candidate - 1]
        root.add(f"{place}. candidate {candidate}  {rate:.2f} {_bar(round(rate * 10))}")
    for pair in ranking.pairs:
        winner = pair.judgment.verdict.winner
        shown = {1: pair.first, 2: pair.second}
        outcome = "tie" if winner is None else f"candidate {shown[winner]}"
        root.add(f"[dim]{pair.first} vs {pair.second}: {outcome}[/dim]")
    return root


def _add_findings(root: object, findings: list[Finding]) -> None:
    from rich.markup import escape

    if not findings:
        return
    colours = {"error": "red", "warning": "yellow", "info": "dim"}
    branch = root.add("[bold]Findings[/bold]")  # type: ignore[attr-defined]
    for f in findings:
        colour = colours[f.severity]
        branch.add(f"[{colour}]{f.severity}[/{colour}] {f.code} {escape(f.path)}: {escape(f.message)}")
