"""The one cursor rule of every list endpoint (tailorlm/server/protocol/pagination.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tailorlm.errors import NotFoundError
from tailorlm.server.protocol.pagination import CursorPage, ListPage, PageQuery, page


@dataclass
class Rec:
    id: str
    kind: str = "a"


RECS = [Rec("r1"), Rec("r2", "b"), Rec("r3"), Rec("r4", "b"), Rec("r5")]  # oldest first


def ids(q: PageQuery, **kw) -> tuple[list[str], bool]:
    window, more = page(RECS, q, **kw)
    return [r.id for r in window], more


def test_order_limit_and_has_more():
    assert ids(PageQuery(2)) == (["r5", "r4"], True)  # newest first by default
    assert ids(PageQuery(2, "asc")) == (["r1", "r2"], True)
    assert ids(PageQuery(5)) == (["r5", "r4", "r3", "r2", "r1"], False)  # exactly all: no more
    assert ids(PageQuery(100, "asc")) == (["r1", "r2", "r3", "r4", "r5"], False)
    assert page([], PageQuery(3)) == ([], False)


def test_after_and_before_are_exclusive_cursors():
    assert ids(PageQuery(2, after="r4")) == (["r3", "r2"], True)
    assert ids(PageQuery(2, after="r2")) == (["r1"], False)
    assert ids(PageQuery(2, after="r1")) == ([], False)  # the last one: an empty page
    assert ids(PageQuery(2, "asc", after="r3")) == (["r4", "r5"], False)
    # `before` alone: the records just before it, in the page's order
    assert ids(PageQuery(2, before="r1")) == (["r3", "r2"], True)
    assert ids(PageQuery(1, "asc", before="r3")) == (["r2"], True)
    assert ids(PageQuery(3, before="r5")) == ([], False)
    # both: the window between them, from `after` on
    assert ids(PageQuery(1, after="r5", before="r2")) == (["r4"], True)
    assert ids(PageQuery(9, after="r5", before="r2")) == (["r4", "r3"], False)
    assert ids(PageQuery(9, after="r2", before="r5")) == ([], False)  # crossed cursors


def test_keep_filters_what_is_shown_not_what_a_cursor_names():
    is_a = lambda r: r.kind == "a"  # noqa: E731
    assert ids(PageQuery(2), keep=is_a) == (["r5", "r3"], True)
    assert ids(PageQuery(2, after="r4"), keep=is_a) == (["r3", "r1"], False)  # r4 is shown by no page
    assert ids(PageQuery(2, after="r3"), keep=is_a) == (["r1"], False)


def test_an_unknown_cursor_is_a_404_on_its_parameter():
    with pytest.raises(NotFoundError) as err:
        page(RECS, PageQuery(2, after="nope"))
    assert (err.value.param, err.value.message, err.value.status) == ("after", "No such object: nope", 404)
    with pytest.raises(NotFoundError) as err:
        page(RECS, PageQuery(2, before="nope"), missing="No such File object: {}".format)
    assert (err.value.param, err.value.message) == ("before", "No such File object: nope")
    with pytest.raises(NotFoundError) as err:  # both unknown: `after` is named
        page(RECS, PageQuery(2, after="x", before="y"))
    assert err.value.param == "after"
    with pytest.raises(NotFoundError):  # an empty cursor is a cursor (routes that ignore it pass None)
        page(RECS, PageQuery(2, after=""))


def test_the_two_list_shapes():
    assert ListPage.build([Rec("r1")], True).model_dump(mode="json") == {
        "object": "list", "data": [{"id": "r1", "kind": "a"}], "has_more": True}
    assert CursorPage.build([Rec("r2"), Rec("r1")], False).model_dump(mode="json") == {
        "object": "list", "data": [{"id": "r2", "kind": "a"}, {"id": "r1", "kind": "a"}], "has_more": False,
        "first_id": "r2", "last_id": "r1"}
    assert CursorPage.build([], False).model_dump(mode="json") == {
        "object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
