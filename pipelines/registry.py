"""Named registries: params.yaml picks datasets, models, mixing and merge methods by name."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any, Generic, TypeVar

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
            ConfigError: a parameter is unknown to the class, of the wrong type, or out of range.
        """
        cls = self.get(name, key=key)
        check_arguments(cls, params, options_key)
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


@cache
def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    # a dataclass's fields: the class's own hints resolve each field in the module that declares it
    function = target if dataclasses.is_dataclass(target) else target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(function, include_extras=True)
    except (NameError, TypeError):  # an annotation that does not resolve: nothing to check against
        return {}


@cache
def _strict_adapter(annotation: Any) -> Any:
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(annotation, config=ConfigDict(strict=True))


def check_arguments(target: Callable[..., Any], given: Mapping[str, Any], key: str) -> None:
    """Check each of ``given`` against the annotation of the parameter of ``target`` (a function,
    or a class's ``__init__``) with that name, strictly: ``true`` is not an int, ``"0.5"`` is not a
    float (an int is a float). Names ``target`` does not annotate are left to the call.

    Args:
        key: the params.yaml key the values came from (``merge.params.ties``), named in the error.

    Raises:
        ConfigError: ``<key>.<name> <what it should be>, got <value>``.
    """
    from pydantic import ValidationError

    hints = _hints(target)
    for name, value in given.items():
        if name not in hints:
            continue
        try:
            # as JSON: the values come from YAML, which has lists where a parameter takes a tuple
            _strict_adapter(hints[name]).validate_json(json.dumps(value, default=str))
        except ValidationError as error:
            message = error.errors()[0]["msg"]
            raise ConfigError(f"{key}.{name}: {message[0].lower()}{message[1:]}, got {value!r}") from None
