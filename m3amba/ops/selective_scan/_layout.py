"""How the Triton scan kernels address their large tensors (see :class:`SeqLayout`)."""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from torch import Tensor

__all__ = ["SeqLayout", "plain_layout"]


class SeqLayout(NamedTuple):
    """Where the kernels find element (batch b, channel d, step t) of the large tensors.

    Channel ``d`` is channel ``d % di`` of direction ``d // di``. ``u`` (and ``z``) element is at
    ``b su[0] + (d // di) su[1] + (d % di) su[2] + pos(t) s_l``; ``delta`` and the outputs shaped like
    it (``y``, ``du``, ``ddelta``) likewise with ``sd``; ``dy`` with ``sy``. ``pos(t)`` is ``t``, or
    with ``perm`` (a ``(directions, L)`` int32 table) the stored position of direction ``d // di``'s
    step ``t``: the 2-D cross-scan reads its four directions straight from one channels-last map.
    """

    di: int
    su: Tuple[int, int, int]
    sd: Tuple[int, int, int]
    sy: Tuple[int, int, int]
    s_l: int
    perm: Optional[Tensor]


def plain_layout(dim: int, length: int) -> SeqLayout:
    """The layout of contiguous ``(batch, Dm, L)`` tensors: one sequence a channel, no directions."""
    s = (dim * length, 0, length)
    return SeqLayout(dim, s, s, s, 1, None)
