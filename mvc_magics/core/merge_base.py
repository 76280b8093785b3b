"""The merge base of versions: their nearest common ancestor in the version graph, as git finds one.

Pure graph code over a ``parents_of`` function (the operations layer reads parents from the index).
A version is its own ancestor at distance 0, so the merge base of a fine-tune and the model it was
fine-tuned from is that model.

>>> graph = {"pre": [], "a": ["pre"], "b": ["pre"], "c": ["b"]}
>>> merge_base(["a", "c"], graph.__getitem__)
'pre'
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence


def ancestor_distances(start: str, parents_of: Callable[[str], Sequence[str]]) -> dict[str, int]:
    """Every ancestor of ``start`` (itself included, at 0) with its distance in parent steps."""
    distances = {start: 0}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for parent in parents_of(current):
            if parent not in distances:
                distances[parent] = distances[current] + 1
                queue.append(parent)
    return distances


def best_common_ancestors(heads: Sequence[str], parents_of: Callable[[str], Sequence[str]]
                          ) -> list[tuple[str, int]]:
    """The common ancestors of ``heads`` that are not ancestors of another common ancestor, each with
    its total distance to the heads, nearest first (ties by id, so the order is deterministic)."""
    if not heads:
        return []
    maps = [ancestor_distances(head, parents_of) for head in heads]
    common = set(maps[0]).intersection(*maps[1:])
    # An ancestor of a common ancestor is common too: walking up from the common ones' parents
    # marks exactly the common ancestors that are not the nearest.
    covered: set[str] = set()
    queue = deque(parent for node in common for parent in parents_of(node))
    while queue:
        node = queue.popleft()
        if node not in covered:
            covered.add(node)
            queue.extend(parents_of(node))
    best = [(node, sum(m[node] for m in maps)) for node in common - covered]
    return sorted(best, key=lambda item: (item[1], item[0]))


def merge_base(heads: Sequence[str], parents_of: Callable[[str], Sequence[str]]) -> str | None:
    """The nearest common ancestor of ``heads`` (None when they have none).

    When several common ancestors are not ancestors of one another (criss-cross histories), the one
    with the smallest total distance to the heads is taken, then the smallest id.
    """
    best = best_common_ancestors(heads, parents_of)
    return best[0][0] if best else None
