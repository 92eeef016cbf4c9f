"""Which ``ModelBatcher`` belongs to which loaded model: keyed by the model object itself.

Why not ``id(model)``: an id is only unique among objects alive at the same time. Once a retired
version is garbage-collected, CPython may hand its address, and so its id, to the next
``LoadedModel``; a table keyed by id alone would then give the new version the old version's
batcher (its session, signature and policy). Why not ``(name, version)``: the same version can
be loaded twice at once - ``RepositoryModelUnload`` then ``RepositoryModelLoad`` of an unchanged
version while the old object still drains, or a re-published version directory - and each object
needs its own queue, and retiring the old one must not remove the new one's.

So the key is the model object compared by identity (``is``). ``LoadedModel`` is a frozen
dataclass whose generated ``__eq__`` / ``__hash__`` compare field values (hashing one fails today:
its manifest holds a dict), so a plain ``dict`` keyed by it would not do: ``_Identity`` hashes by
id but holds a strong reference and compares with ``is``, so while an entry exists its id cannot
be reused and no other object can ever match it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class _Identity:
    """A dict key that is exactly one object (held alive), whatever its ``__eq__`` says."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


class BatcherRegistry(Generic[T]):
    """Loaded model object -> its batcher (or anything else per model version)."""

    def __init__(self) -> None:
        self._entries: dict[_Identity, T] = {}

    def get(self, model: object) -> T | None:
        return self._entries.get(_Identity(model))

    def get_or_create(self, model: object, create: Callable[[], T]) -> T:
        """The model's entry; ``create()`` makes it on first use."""
        key = _Identity(model)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = create()
        return entry

    def pop(self, model: object) -> T | None:
        """Forgets the model (and releases the registry's reference to it)."""
        return self._entries.pop(_Identity(model), None)

    def values(self) -> Iterator[T]:
        return iter(list(self._entries.values()))

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model: object) -> bool:
        return _Identity(model) in self._entries
