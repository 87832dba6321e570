"""OpenAI's list pages: the one cursor rule every list endpoint follows, and the two shapes a list takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Self, TypeVar

from tailorlm.errors import NotFoundError
from tailorlm.server.protocol.common import OpenAIResponse

R = TypeVar("R")
T = TypeVar("T")
Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class PageQuery:
    """What a list request asks for: at most `limit` records in `order`, between the cursors `after` and `before`."""

    limit: int
    order: Order = "desc"
    after: str | None = None
    before: str | None = None


def page(records: Sequence[R], q: PageQuery, *, keep: Callable[[R], bool] | None = None,
         missing: Callable[[str], str] = "No such object: {}".format) -> tuple[list[R], bool]:
    """One page of `records` (oldest first, each with an `id`) shown in `q.order`: the first `q.limit` strictly
    after the record `q.after` and before the record `q.before` (with `before` alone, the last `q.limit` before
    it); and whether there are more than the page between the cursors.

    A cursor may name any of `records`; `keep` chooses what is shown, not what a cursor may name. A cursor that
    names none is a 404 on its parameter, with the message `missing(cursor)`.
    """
    ordered = list(reversed(records)) if q.order == "desc" else list(records)
    ids = [r.id for r in ordered]  # type: ignore[attr-defined]
    for cursor, param in ((q.after, "after"), (q.before, "before")):
        if cursor is not None and cursor not in ids:
            raise NotFoundError(missing(cursor), param=param)
    start = ids.index(q.after) + 1 if q.after is not None else 0
    end = ids.index(q.before) if q.before is not None else len(ordered)
    window = [r for r in ordered[start:end] if keep is None or keep(r)]
    if q.before is not None and q.after is None:  # the records just before the cursor
        return window[-q.limit:], len(window) > q.limit
    return window[:q.limit], len(window) > q.limit


class ListPage(OpenAIResponse, Generic[T]):
    """OpenAI's paginated list; `has_more`: asking again with `after` = the last id gets more."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool

    @classmethod
    def build(cls, data: list[T], has_more: bool) -> Self:
        return cls(data=data, has_more=has_more)


class CursorPage(ListPage[T], Generic[T]):
    """A list that also names its first and last ids (null when it is empty, as OpenAI returns)."""

    first_id: str | None
    last_id: str | None

    @classmethod
    def build(cls, data: list[T], has_more: bool) -> Self:
        first, last = (data[0].id, data[-1].id) if data else (None, None)  # type: ignore[attr-defined]
        return cls(data=data, has_more=has_more, first_id=first, last_id=last)
