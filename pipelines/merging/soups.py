"""Model soups (Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time", ICML 2022, https://arxiv.org/abs/2203.05482)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipelines.errors import ConfigError
from pipelines.merging.state import StateDict, weighted_average

ScoreFn = Callable[[StateDict], float]


def uniform_soup(states: Sequence[StateDict]) -> tuple[StateDict, list[int]]:
    """The plain average of every model."""
    return weighted_average(states), list(range(len(states)))


def greedy_soup(
    states: Sequence[StateDict], score: ScoreFn | None = None, scores: Sequence[float] | None = None
) -> tuple[StateDict, list[int]]:
    """Greedy soup (the paper's Recipe 1).

    Models are visited in decreasing order of their own held-out score (ties by position); each is
    kept if the average of the soup with it scores at least as well as the soup without it.

    Args:
        states: the fine-tuned models (same architecture and initialisation).
        score: held-out score of a state dict, higher is better (e.g. validation accuracy).
        scores: the models' own scores, if already known (saves one evaluation per model).

    Returns:
        The soup and the indices of its members, in the order they were added.
    """
    if score is None:
        raise ConfigError("merge: greedy_soup needs a score function (held-out accuracy)")
    own = list(scores) if scores is not None else [score(s) for s in states]
    if len(own) != len(states):
        raise ConfigError(f"merge: greedy_soup got {len(own)} scores for {len(states)} models")
    order = sorted(range(len(states)), key=lambda i: (-own[i], i))
    members = [order[0]]
    best = own[order[0]]
    for candidate in order[1:]:
        trial = members + [candidate]
        trial_score = score(weighted_average([states[i] for i in trial]))
        if trial_score >= best:
            members, best = trial, trial_score
    return weighted_average([states[i] for i in members]), members
