"""PyTorch modules mvc_magics itself defines: the output ensemble of stored versions.

Imported only by the PyTorch adapter (this module imports torch). Its class path is on the
adapter's trusted list, so an ensemble rebuilds from its stored structure when its members do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class OutputEnsemble(torch.nn.Module):
    """The weighted mean of the members' outputs (``method="ensemble"``), or their weighted
    majority vote (``"vote"``: each member votes for its argmax class over the last dimension; the
    output is each class's share of the vote).

    >>> ens = OutputEnsemble([net_a, net_b], weights=[0.5, 0.5])   # doctest: +SKIP
    """

    # describe()/construct() pass the members as the ``members`` argument, rebuilt one by one.
    mvc_members_argument = "members"

    def __init__(self, members: Sequence[torch.nn.Module], weights: Sequence[float] | None = None,
                 method: str = "ensemble") -> None:
        super().__init__()
        if method not in ("ensemble", "vote"):
            raise ValueError(f"method must be 'ensemble' or 'vote', not {method!r}")
        self.members = torch.nn.ModuleList(members)
        count = len(self.members)
        self.weights = [float(w) for w in (weights if weights is not None else [1.0 / count] * count)]
        if len(self.weights) != count:
            raise ValueError(f"{count} members but {len(self.weights)} weights")
        self.method = method

    def forward(self, *args, **kwargs):
        outputs = [member(*args, **kwargs) for member in self.members]
        if self.method == "vote":
            classes = outputs[0].shape[-1]
            votes = [torch.nn.functional.one_hot(o.argmax(-1), classes).to(o.dtype) * w
                     for o, w in zip(outputs, self.weights, strict=True)]
            return torch.stack(votes).sum(0) / sum(self.weights)
        return sum(o * w for o, w in zip(outputs, self.weights, strict=True)) / sum(self.weights)
