"""Repository documents read by schema: one place that turns a pydantic
ValidationError into one line naming the object and each wrong field."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from drkit.errors import RepositoryError

T = TypeVar("T")

_SHOWN = 3  # fields named per message; the count says how many more


def parse_document(adapter: TypeAdapter[T], data: object, origin: str, what: str) -> T:
    """``data`` validated by ``adapter``. Raises RepositoryError: ``<origin>: unreadable
    <what> (at sources[0].stored_size: Input should be a valid integer; ...)``."""
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise RepositoryError(f"{origin}: unreadable {what} ({describe(exc)})") from None


def describe(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for err in errors[:_SHOWN]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        parts.append(f"at {where.lstrip('.') or 'top level'}: {err['msg']}")
    more = len(errors) - _SHOWN
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def lazy_adapter(of: Callable[[], Any]) -> Callable[[], TypeAdapter[Any]]:
    """A TypeAdapter built on first use: building a schema costs memory (~1 MiB each) that
    a backup, which writes these documents but never reads them, should not pay."""
    return functools.cache(lambda: TypeAdapter(of()))
