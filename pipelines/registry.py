"""Named registries: params.yaml picks datasets, models, mixing and merge methods by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from pipelines.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with one clear error for unknown names.

    Args:
        kind: what the entries are, used in messages ("mixing method").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name``; duplicate names are a bug."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def register_named(self, name: str) -> Callable[[T], T]:
        """Like :meth:`register`, for classes that also record their own name as ``cls.name``."""

        def add(cls: T) -> T:
            cls.name = name  # type: ignore[attr-defined]
            return self.register(name)(cls)

        return add

    def build(self, name: str, key: str, options_key: str, **params: object) -> object:
        """Instantiate the class registered as ``name`` with ``params``.

        Args:
            key: the params.yaml key the name came from (named if it is unknown).
            options_key: the key the parameters came from (named if one is not accepted).

        Raises:
            UnknownNameError: ``name`` is not registered.
            ConfigError: a parameter is unknown to the class or out of range.
        """
        cls = self.get(name, key=key)
        try:
            return cls(**params)  # type: ignore[operator]
        except TypeError as error:
            raise ConfigError(f"{options_key}: {self.kind} {name!r} does not take these parameters ({error})") from None

    def get(self, name: str, key: str | None = None) -> T:
        """The entry called ``name``.

        Args:
            name: the registered name.
            key: the params.yaml key the name came from, named in the error.

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists the known names.
        """
        try:
            return self._entries[name]
        except KeyError:
            where = f"{key}: " if key else ""
            raise UnknownNameError(
                f"{where}unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
