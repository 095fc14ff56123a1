"""Peak bytes of the tensors autograd saves for the backward pass, counted on the CPU.

CUDA reports `torch.cuda.max_memory_allocated`; the CPU has no such counter, so the trainer
counts what the simulator's activation model predicts: the tensors the forward saves for the
backward (`torch.autograd.graph.saved_tensors_hooks`), each storage once, from the moment it
is saved until the graph that holds it is freed. Parameters saved by the ops that use them
are model states, counted apart, and are skipped here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


class _Held:
    """A saved tensor; the count drops when autograd frees it (its graph is released)."""

    __slots__ = ("tensor", "counter", "key")

    def __init__(self, tensor: torch.Tensor, counter: SavedBytes, key: int) -> None:
        self.tensor, self.counter, self.key = tensor, counter, key

    def __del__(self) -> None:
        self.counter.release(self.key)


class SavedBytes:
    """Live and peak bytes of the distinct storages autograd holds for the backward."""

    def __init__(self, excluded: Iterable[torch.Tensor] = ()) -> None:
        # storages by identity, not address: ZeRO-3 frees and reallocates the weights' storage
        self.excluded = {t.untyped_storage()._cdata for t in excluded}
        self.refs: dict[int, int] = {}  # storage address -> saved tensors holding it
        self.sizes: dict[int, int] = {}
        self.live_bytes = 0
        self.peak_bytes = 0

    def pack(self, tensor: torch.Tensor) -> object:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if storage._cdata in self.excluded or storage.nbytes() == 0:
            return tensor
        if key not in self.refs:
            self.refs[key], self.sizes[key] = 0, storage.nbytes()
            self.live_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self.refs[key] += 1
        return _Held(tensor, self, key)

    def release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live_bytes -= self.sizes.pop(key)

    @staticmethod
    def unpack(held: object) -> torch.Tensor:
        return held.tensor if isinstance(held, _Held) else held

    @contextmanager
    def counting(self) -> Iterator[None]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield
