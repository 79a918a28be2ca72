"""Batched states as pytrees of tensors with a leading batch dimension.

A diffusion state can be one tensor (tokens, images) or a tuple/dict of tensors (a graph's node
features, adjacency and mask). The decoders only ever index, repeat and concatenate states along
the batch dimension, so these helpers are all the core needs to know about their layout.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten, tree_map

State = Any  # a tensor, or a tuple/list/dict of tensors sharing the leading batch dimension


def batch_size(state: State) -> int:
    """Number of rows of a batched state."""
    leaves, _ = tree_flatten(state)
    return leaves[0].shape[0]


def state_device(state: State) -> torch.device:
    """The device of a state's (first) tensor."""
    return tree_flatten(state)[0][0].device


def distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, inverse)``: the index of each distinct row's first occurrence, in order of first
    occurrence, and for every row the position of its row in ``first`` (``x[first][inverse]`` is ``x``)."""
    flat = x.reshape(x.shape[0], -1)
    unique, inverse = torch.unique(flat, dim=0, return_inverse=True)  # sorted rows
    n, arange = flat.shape[0], torch.arange(flat.shape[0], device=x.device)
    first = torch.full((unique.shape[0],), n, dtype=torch.long, device=x.device).scatter_reduce_(0, inverse, arange, "amin")
    order = first.argsort()
    position = torch.empty_like(order)
    position[order] = torch.arange(order.shape[0], device=x.device)
    return first[order], position[inverse]


def index_rows(state: State, index: torch.Tensor) -> State:
    """Rows ``index`` of every tensor in ``state``."""
    return tree_map(lambda t: t[index.to(t.device)], state)


def repeat_rows(state: State, times: int) -> State:
    """Each row repeated ``times`` times in place: row b becomes rows b*times .. b*times+times-1."""
    return tree_map(lambda t: t.repeat_interleave(times, dim=0), state)


def concat_rows(states: list[State]) -> State:
    """Concatenate states along the batch dimension."""
    return tree_map(lambda *ts: torch.cat(ts, dim=0), *states)


def slice_rows(state: State, start: int, stop: int) -> State:
    return tree_map(lambda t: t[start:stop], state)


def map_chunked(fn: Callable[[State], State], state: State, chunk_size: int | None) -> State:
    """Apply ``fn`` to row chunks of at most ``chunk_size`` rows and concatenate the results."""
    n = batch_size(state)
    if chunk_size is None or n <= chunk_size:
        return fn(state)
    return concat_rows([fn(slice_rows(state, i, min(i + chunk_size, n))) for i in range(0, n, chunk_size)])
