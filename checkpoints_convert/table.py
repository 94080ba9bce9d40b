"""Weight mapping as a table: specjax parameter path <-> source tensor name, with a reversible hook.

A `Hook` is a pair of array functions: `forward` takes a tensor in the source layout (Hugging Face's
torch `Linear` weight [out, in], or GGUF's) to specjax's layout, `inverse` takes it back. The same
table imports (`import_tensors`) and exports (`export_tensors`); the expected source shape of every
tensor is derived from specjax's shape through `inverse`, so every key is used and every shape is
checked in both directions.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import numpy as np
from tqdm.auto import tqdm

from specjax.checkpoint import CheckpointError, check_tensors

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Hook:
    """forward: source layout -> specjax layout; inverse: specjax layout -> source layout."""

    forward: Callable[[Array], Array]
    inverse: Callable[[Array], Array]

    def then(self, other: "Hook") -> "Hook":
        """self, then other (on import); other's inverse, then self's (on export)."""
        return Hook(lambda x: other.forward(self.forward(x)), lambda y: self.inverse(other.inverse(y)))


IDENTITY = Hook(lambda x: x, lambda y: y)
TRANSPOSE = Hook(lambda x: x.T, lambda y: y.T)  # Linear weight [out, in] <-> [in, out]


def heads_in(n: int) -> Hook:
    """q/k/v projection: Linear weight [n*A, D] <-> [D, n, A]."""
    return Hook(lambda x: x.T.reshape(x.shape[1], n, -1), lambda y: y.reshape(y.shape[0], -1).T)


def heads_out(n: int) -> Hook:
    """o projection: Linear weight [D, n*A] <-> [n, A, D]."""
    return Hook(lambda x: x.T.reshape(n, -1, x.shape[0]), lambda y: y.reshape(-1, y.shape[-1]).T)


def heads_bias(n: int) -> Hook:
    """q/k/v bias: [n*A] <-> [n, A]."""
    return Hook(lambda x: x.reshape(n, -1), lambda y: y.reshape(-1))


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the table: specjax flat path (e.g. 'layers.3.q'), source tensor name, hook."""

    path: str
    name: str
    hook: Hook = IDENTITY

    def source_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The source-layout shape of a tensor whose specjax shape is `shape` (no data touched)."""
        return tuple(self.hook.inverse(np.broadcast_to(np.zeros((), np.int8), shape)).shape)


def check_table(table: list[Entry], shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """The table must cover every specjax parameter exactly once (a programming error otherwise)."""
    paths = [e.path for e in table]
    names = [e.name for e in table]
    if sorted(paths) != sorted(shapes) or len(set(names)) != len(names):
        raise AssertionError(f"{what} table does not match param_shapes: "
                             f"missing {sorted(set(shapes) - set(paths))}, extra {sorted(set(paths) - set(shapes))}")


def import_tensors(table: list[Entry], shapes: dict[str, tuple[int, ...]], source_shapes: dict[str, tuple[int, ...]],
                   read: Callable[[str], Array], source: str, ignorable: Iterable[str] = (),
                   progress: bool | None = None) -> dict[str, Array]:
    """Reads every table entry from a source -> {specjax path: array}.

    shapes: specjax path -> expected specjax shape (`expected_shapes(cfg)`).
    source_shapes: every tensor the source holds -> its shape (read before any data is).
    read: source name -> array. ignorable: source names that may be present and are not used.
    Raises CheckpointError naming every missing, unexpected or wrongly shaped tensor of `source`.
    """
    check_table(table, shapes, source)
    expected = {e.name: e.source_shape(shapes[e.path]) for e in table}
    ignorable = set(ignorable)
    check_tensors({n: tuple(v) for n, v in source_shapes.items() if n in expected or n not in ignorable},
                  expected, source)

    out = {}
    for e in tqdm(table, desc=f"converting {len(table)} tensors", unit="tensor",
                  disable=(len(table) < 64) if progress is None else not progress):
        x = e.hook.forward(np.asarray(read(e.name)))
        if x.shape != tuple(shapes[e.path]):
            raise CheckpointError(f"{source}: {e.name} -> {e.path} has shape {x.shape}, expected {shapes[e.path]}")
        out[e.path] = np.ascontiguousarray(x)
    return out


def export_tensors(table: list[Entry], flat: dict[str, Array]) -> dict[str, Array]:
    """{specjax path: array} -> {source name: array}, through the inverse hooks."""
    check_table(table, {k: v.shape for k, v in flat.items()}, "export")
    return {e.name: np.ascontiguousarray(e.hook.inverse(np.asarray(flat[e.path]))) for e in table}
