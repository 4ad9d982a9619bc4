"""Exercises the local queries of examples/client.py against a running daemon:
query (selectors, sort, limit and cursor paging, plans, bad_query) and
watch_query (the first result, then added / changed / removed).

The daemon must run with this in its config (the index tests need it):

    [collections.todos]
    indexes = ["due", ["done", "due"]]

Run by a Rust test that starts the daemon and sets, as for
tests/python_client_test.py:
  SYNCD_SOCKET  the daemon's socket
  SYNCD_CLIENT  path of examples/client.py

Expected results are computed here from `list` (a plain filter and sort
over every record), so the script holds even on a daemon other tests
write to.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
import unittest

SOCKET = os.environ["SYNCD_SOCKET"]
spec = importlib.util.spec_from_file_location("syncd_client", os.environ["SYNCD_CLIENT"])
client = importlib.util.module_from_spec(spec)
spec.loader.exec_module(client)
Client, SyncdError = client.Client, client.SyncdError

# How long to wait for an event (or an index to be ready) before failing.
WAIT_S = 15
# Collections of their own per run (but `todos`, whose indexes the config
# declares), so that the script can run again on the same daemon.
RUN = os.urandom(3).hex()
NESTED = f"pyq_nested_{RUN}"
COLLATE = f"pyq_collate_{RUN}"
CLI = f"pyq_cli_{RUN}"
LIVE = f"pyq_live_{RUN}"
ELSEWHERE = f"pyq_elsewhere_{RUN}"
PAGE = f"pyq_page_{RUN}"
OTHER = f"pyq_other_{RUN}"
REPL = f"pyq_repl_{RUN}"


def connect():
    return Client(SOCKET, app="python-query-test")


# -- a reference: CouchDB's collation, as docs/ipc-protocol.md §17 states it

MISSING = object()


def ckey(v):
    """A sort key in the collation order: missing < null < false < true <
    numbers < strings (code point) < arrays < objects."""
    if v is MISSING:
        return (0, 0)
    if v is None:
        return (1, 0)
    if v is False:
        return (2, 0)
    if v is True:
        return (3, 0)
    if isinstance(v, (int, float)):
        return (4, float(v))
    if isinstance(v, str):
        return (5, v)
    if isinstance(v, list):
        return (6, tuple(ckey(x) for x in v))
    return (7, tuple((k, ckey(x)) for k, x in sorted(v.items())))


def field(doc, path):
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return MISSING
        doc = doc[part]
    return doc


def every_record(c, collection):
    out, start = [], None
    while True:
        page, start = c.list(collection, start=start, limit=500)
        out.extend(page)
        if start is None:
            return out


def expected(c, collection, pred, sort=()):
    """Ids of `collection` whose documents meet `pred`, in the query order:
    the sort fields, then the id in the last field's direction."""
    fields = []  # (path, descending)
    for s in sort:
        if isinstance(s, dict):
            fields.append((s["field"], s.get("desc", False)))
        else:
            f, _, way = s.partition(":")
            fields.append((f, way == "desc"))
    recs = [r for r in every_record(c, collection) if pred(r["data"])]

    def cmp(a, b):
        for f, desc in fields:
            x, y = ckey(field(a["data"], f)), ckey(field(b["data"], f))
            if x != y:
                o = -1 if x < y else 1
                return -o if desc else o
        o = (a["id"] > b["id"]) - (a["id"] < b["id"])
        return -o if fields and fields[-1][1] else o

    return [r["id"] for r in sorted(recs, key=functools.cmp_to_key(cmp))]


def pages(c, collection, selector, sort, limit):
    """Follows the cursors to the end; returns (ids, plans, page sizes)."""
    ids, plans, sizes, cursor = [], [], [], None
    for _ in range(1000):
        p = c.query(collection, selector, sort, limit=limit, cursor=cursor)
        ids += [r["id"] for r in p["records"]]
        plans.append(p["plan"])
        sizes.append(len(p["records"]))
        cursor = p["next"]
        if cursor is None:
            return ids, plans, sizes
    raise AssertionError("the cursors never ended")


def put_todos():
    """Twenty-odd todos: duplicate due dates (ties broken by id), and a due
    that is null, missing, a number (ranges compare across types)."""
    with connect() as c:
        for i in range(20):
            doc = {"title": f"todo {i:02}", "done": i % 3 == 0, "due": f"2026-12-{1 + i % 10:02}"}
            c.put("todos", doc, id=f"pyq-{i:02}")
        c.put("todos", {"title": "null due", "done": False, "due": None}, id="pyq-null")
        c.put("todos", {"title": "no due", "done": False}, id="pyq-none")
        c.put("todos", {"title": "numeric due", "done": False, "due": 20261210}, id="pyq-num")
        # the indexes are declared in the config and built in the background
        deadline = time.monotonic() + WAIT_S
        while True:
            plan = c.query("todos", {"done": False}, ["due"], limit=1)["plan"]
            if plan["index"] == "done,due":
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"index done,due not used after {WAIT_S}s (plan {plan}); "
                    'does the config declare [collections.todos] indexes = ["due", ["done", "due"]]?'
                )
            time.sleep(0.1)


class Query(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        put_todos()

    def assertQuery(self, c, selector, pred, sort=(), collection="todos"):
        want = expected(c, collection, pred, sort)
        p = c.query(collection, selector, sort, limit=10000)
        got = [r["id"] for r in p["records"]]
        self.assertEqual(got, want, f"query {selector} sort {list(sort)} (plan {p['plan']})")
        self.assertIsNone(p["next"])
        return p

    def test_selector_and_cross_type_ranges(self):
        with connect() as c:
            def open_and_due_before(d):
                due = field(d, "due")
                return d.get("done") is False and due is not MISSING and ckey(due) < ckey("2026-12-05")

            # null and the number sort below every string: both match; the
            # record without `due` does not (a missing field meets nothing).
            p = self.assertQuery(c, {"done": False, "due": {"$lt": "2026-12-05"}}, open_and_due_before, ["due"])
            ids = [r["id"] for r in p["records"]]
            self.assertIn("pyq-null", ids)
            self.assertIn("pyq-num", ids)
            self.assertNotIn("pyq-none", ids)
            view = {"collection", "id", "data", "server_id", "version", "updated_at", "pending", "local_only", "scope", "attachments"}
            for r in p["records"]:
                self.assertEqual(set(r), view)
            # keep strings only by bounding the type
            self.assertQuery(
                c,
                {"due": {"$gte": "", "$lt": "2026-12-05"}},
                lambda d: isinstance(field(d, "due"), str) and field(d, "due") < "2026-12-05",
                ["due"],
            )
            self.assertQuery(c, {"due": {"$exists": False}}, lambda d: field(d, "due") is MISSING)
            self.assertQuery(c, {"due": None}, lambda d: "due" in d and d["due"] is None)
            # $ne skips records without the field, a top-level $not does not
            self.assertQuery(c, {"due": {"$ne": "2026-12-01"}}, lambda d: "due" in d and d["due"] != "2026-12-01")
            self.assertQuery(c, {"$not": {"due": "2026-12-01"}}, lambda d: d.get("due", MISSING) != "2026-12-01")
            self.assertQuery(
                c,
                {"$or": [{"due": "2026-12-02"}, {"title": {"$in": ["todo 05", "no due"]}}]},
                lambda d: d.get("due") == "2026-12-02" or d.get("title") in ("todo 05", "no due"),
                ["title:desc"],
            )

    def test_sort_desc_and_several_fields(self):
        with connect() as c:
            p = self.assertQuery(c, {"done": False}, lambda d: d.get("done") is False, ["due:desc"])
            # the record without `due` sorts as missing: last when descending
            self.assertEqual(p["records"][-1]["id"], "pyq-none")
            self.assertEqual(p["plan"]["index"], "done,due")
            self.assertTrue(p["plan"]["ordered"])
            self.assertQuery(c, {}, lambda d: True, ["done", "due:desc"])
            self.assertQuery(c, {}, lambda d: True, [{"field": "due", "desc": False}, "title"])

    def test_limit_and_cursor_paging_to_the_end(self):
        with connect() as c:
            for selector, sort, pred, index in (
                ({"done": False}, ["due"], lambda d: d.get("done") is False, "done,due"),
                ({"done": False}, ["due:desc"], lambda d: d.get("done") is False, "done,due"),
                ({}, ["due"], lambda d: True, "due"),
                ({"title": {"$gte": "todo"}}, ["title:desc"], lambda d: d.get("title", "") >= "todo", None),
            ):
                want = expected(c, "todos", pred, sort)
                ids, plans, sizes = pages(c, "todos", selector, sort, limit=4)
                self.assertEqual(ids, want, f"paging {selector} {sort}")
                self.assertEqual(len(sizes), max(1, -(-len(want) // 4)), f"pages {sizes}")
                self.assertTrue(all(n == 4 for n in sizes[:-1]), f"pages {sizes}")
                self.assertEqual({p["index"] for p in plans}, {index}, plans)
                # query_all follows the cursors too
                self.assertEqual([r["id"] for r in c.query_all("todos", selector, sort, page=3)], want)
            p = c.query("todos", {"done": False}, ["due"], limit=1)
            self.assertEqual(len(p["records"]), 1)
            self.assertIsInstance(p["next"], str)
            self.assertEqual(c.query("todos", limit=0)["records"][:1], c.query("todos", limit=1)["records"])

    def test_plan(self):
        with connect() as c:
            p = c.query("todos", {"done": False, "due": {"$gte": "2026-12-07"}}, ["due"], limit=2)["plan"]
            self.assertEqual(
                (p["index"], p["ordered"], p["bounds"]), ("done,due", True, 'done = false, due >= "2026-12-07"'), p
            )
            # read in order, the index stops one record after the page
            self.assertLessEqual(p["examined"], 3, p)
            p = c.query("todos", {"title": "todo 03"})
            self.assertEqual([r["id"] for r in p["records"]], ["pyq-03"])
            self.assertEqual((p["plan"]["index"], p["plan"]["ordered"], p["plan"]["bounds"]), (None, False, ""))
            s = c.status()
            if "indexes" in s:
                states = {i["index"]: i["state"] for i in s["indexes"] if i["collection"] == "todos"}
                self.assertEqual(states, {"due": "ready", "done,due": "ready"})

    def test_nested_fields_and_arrays(self):
        with connect() as c:
            c.put(NESTED, {"owner": {"name": "ann", "age": 40}, "tags": ["x", "y"]}, id="n1")
            c.put(NESTED, {"owner": {"name": "bob"}, "tags": ["y"]}, id="n2")
            c.put(NESTED, {"owner": "ann", "tags": "x"}, id="n3")
            q = lambda sel: [r["id"] for r in c.query(NESTED, sel)["records"]]
            self.assertEqual(q({"owner.name": "ann"}), ["n1"])
            self.assertEqual(q({"owner": {"name": "ann"}}), ["n1"])
            self.assertEqual(q({"owner": {"$eq": {"name": "bob"}}}), ["n2"])
            self.assertEqual(q({"owner.age": {"$gt": 30}}), ["n1"])
            self.assertEqual(q({"tags": {"$in": ["x"]}}), ["n1", "n3"])
            self.assertEqual(q({"tags": "y"}), [])
            self.assertEqual(q({"tags": ["y"]}), ["n2"])
            self.assertEqual(q({"tags": {"$nin": ["x"]}}), ["n2"])

    def test_collation_order(self):
        values = [None, False, True, -1.5, 2, 10, "", "10", "B", "a", "é", [], [1], [1, 2], [2], {}, {"a": 1}]
        with connect() as c:
            # ids that sort against the value order, so the order is the values'
            for i, v in enumerate(values):
                c.put(COLLATE, {"v": v}, id=f"c{len(values) - i:02}")
            c.put(COLLATE, {}, id="c00")
            self.assertQuery(c, {}, lambda d: True, ["v"], collection=COLLATE)
            self.assertQuery(c, {}, lambda d: True, ["v:desc"], collection=COLLATE)
            got = [r["data"].get("v", "missing") for r in c.query(COLLATE, {}, ["v"])["records"]]
            self.assertEqual(got, ["missing"] + values)
            # ranges across types: every string, array and object is above 1000
            above = lambda d: "v" in d and ckey(d["v"]) > ckey(1000)
            self.assertQuery(c, {"v": {"$gt": 1000}}, above, collection=COLLATE)
            self.assertEqual(c.query(COLLATE, {"v": 2.0})["records"][0]["data"], {"v": 2})

    def test_bad_query(self):
        with connect() as c:
            with self.assertRaises(SyncdError) as e:
                c.query("todos", {"due": {"$gtx": 1}})
            self.assertEqual(e.exception.code, "bad_query")
            self.assertTrue(
                e.exception.message.startswith('selector at $.due.$gtx: unknown operator "$gtx"'), e.exception.message
            )
            cursor = c.query("todos", {}, ["due"], limit=1)["next"]
            for call, where in (
                (lambda: c.query("todos", {"$or": []}), "$.$or"),
                (lambda: c.query("todos", {"a": {"$exists": 1}}), "$.a.$exists"),
                (lambda: c.query("todos", {"a": {"$gt": 1, "b": 2}}), "$.a"),
                (lambda: c.query("todos", [1]), "$"),
                (lambda: c.query("todos", {}, ["a..b"]), "a..b"),
                (lambda: c.query("todos", {}, [f"f{i}" for i in range(17)]), "16"),
                (lambda: c.query("todos", {}, cursor="not a cursor"), "cursor"),
                (lambda: c.query("todos", {}, [], cursor=cursor), "cursor"),
                (lambda: c.watch_query("todos", {"due": {"$in": "x"}}), "$.due.$in"),
            ):
                with self.assertRaises(SyncdError) as e:
                    call()
                self.assertEqual(e.exception.code, "bad_query", e.exception.message)
                self.assertIn(where, e.exception.message)
            with self.assertRaises(SyncdError) as e:
                c.query("-bad", {})
            self.assertEqual(e.exception.code, "bad_collection")
            # the connection is still fine
            self.assertEqual(len(c.query("todos", {}, limit=1)["records"]), 1)

    def test_cli(self):
        with connect() as c:
            for n in range(1, 6):
                c.put(CLI, {"n": n}, id=f"k{n}")
        cmd = [sys.executable, os.environ["SYNCD_CLIENT"], "--socket", SOCKET, "query", CLI]
        run = lambda *args: subprocess.run(cmd + list(args), capture_output=True, text=True)
        out = run('{"n":{"$gte":2}}', "--sort", "n:desc", "--limit", "2")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual([json.loads(line)["id"] for line in out.stdout.splitlines()], ["k5", "k4"])
        self.assertIn("--cursor ", out.stderr)
        cursor = out.stderr.split("--cursor ")[1].strip()
        out = run('{"n":{"$gte":2}}', "--sort", "n:desc", "--limit", "9", "--cursor", cursor)
        self.assertEqual([json.loads(line)["id"] for line in out.stdout.splitlines()], ["k3", "k2"])
        # without --limit: every match, the cursor after k2 included
        out = run()
        self.assertEqual(len(out.stdout.splitlines()), 5, out.stderr)
        out = run('{"n":{"$gte":2}}', "--sort", "n:desc", "--cursor", cursor)
        self.assertEqual([json.loads(line)["id"] for line in out.stdout.splitlines()], ["k3", "k2"])
        out = run('{"n":{"$gtx":2}}')
        self.assertEqual(out.returncode, 1)
        self.assertIn("bad_query", out.stderr)


class LiveQuery(unittest.TestCase):
    def next_query_event(self, w, after):
        """The next event of the live query: (kind, fields)."""
        try:
            kind, fields = w.next_event(timeout=WAIT_S)
        except TimeoutError:
            self.fail(f"no live query event within {WAIT_S}s after {after}")
        self.assertEqual(kind, "query", f"after {after}: {kind} {fields}")
        ((k, f),) = fields.items()
        return k, f

    def expect(self, w, after, kind, id, data=None):
        k, f = self.next_query_event(w, after)
        self.assertEqual((k, f.get("id")), (kind, id), f"after {after}: {k} {f}")
        if kind == "removed":
            self.assertEqual(set(f), {"collection", "id"})
        else:
            self.assertEqual(f["data"], data, f"after {after}")

    def test_without_limit(self):
        with connect() as w, connect() as c:
            c.put(LIVE, {"done": False, "due": "2026-12-03"}, id="a")
            c.put(LIVE, {"done": True, "due": "2026-12-01"}, id="b")
            w.watch_query(LIVE, {"done": False}, sort=["due"])
            k, f = self.next_query_event(w, "watch_query")
            self.assertEqual(k, "result")
            self.assertEqual((f["collection"], f["resync"]), (LIVE, False))
            self.assertEqual([r["id"] for r in f["records"]], ["a"])
            self.assertEqual(f["records"][0]["data"], {"done": False, "due": "2026-12-03"})
            self.assertIn("pending", f["records"][0])

            # writes on another connection; one that never matches brings nothing
            c.put(LIVE, {"done": False, "due": "2026-12-02"}, id="c")
            self.expect(w, "put c", "added", "c", {"done": False, "due": "2026-12-02"})
            c.patch(LIVE, "c", {"title": "x"})
            self.expect(w, "patch c", "changed", "c", {"done": False, "due": "2026-12-02", "title": "x"})
            c.put(LIVE, {"done": True}, id="d")
            c.put(ELSEWHERE, {"done": False}, id="e")
            c.patch(LIVE, "b", {"done": False})
            self.expect(w, "patch b", "added", "b", {"done": False, "due": "2026-12-01"})
            c.patch(LIVE, "a", {"done": True})
            self.expect(w, "patch a", "removed", "a")
            c.delete(LIVE, "c")
            self.expect(w, "delete c", "removed", "c")
            c.put(LIVE, {"done": False}, id="a")
            self.expect(w, "put a", "added", "a", {"done": False})
            # a write on the live query's own connection: its reply first, then the event
            w.delete(LIVE, "b")
            self.expect(w, "delete b (own connection)", "removed", "b")

    def test_with_limit(self):
        with connect() as w, connect() as c:
            for i, due in ((1, "2026-12-05"), (2, "2026-12-06"), (3, "2026-12-07")):
                c.put(PAGE, {"done": False, "due": due}, id=f"p{i}")
            w.watch_query(PAGE, {"done": False}, sort=["due"], limit=2)
            k, f = self.next_query_event(w, "watch_query")
            self.assertEqual((k, [r["id"] for r in f["records"]]), ("result", ["p1", "p2"]))

            # p0 sorts first: p2 leaves the page of two, p0 enters it
            c.put(PAGE, {"done": False, "due": "2026-12-04"}, id="p0")
            self.expect(w, "put p0", "removed", "p2")
            self.expect(w, "put p0", "added", "p0", {"done": False, "due": "2026-12-04"})
            # p3 matches but stays off the page: nothing
            c.patch(PAGE, "p3", {"title": "t"})
            # p1 goes: p2 moves up into the page
            c.delete(PAGE, "p1")
            self.expect(w, "delete p1", "removed", "p1")
            self.expect(w, "delete p1", "added", "p2", {"done": False, "due": "2026-12-06"})
            c.patch(PAGE, "p0", {"title": "x"})
            self.expect(w, "patch p0", "changed", "p0", {"done": False, "due": "2026-12-04", "title": "x"})

    def test_replaces_watch_and_survives_a_bad_one(self):
        with connect() as w, connect() as c:
            w.watch([OTHER])
            w.watch_query(REPL, {"n": {"$gte": 1}})
            k, f = self.next_query_event(w, "watch_query")
            self.assertEqual((k, f["records"]), ("result", []))
            with self.assertRaises(SyncdError) as e:
                w.watch_query(REPL, {"n": {"$gtx": 1}})
            self.assertEqual(e.exception.code, "bad_query")
            # the watch is gone (no `changed` for pyq_other), the live query stays
            c.put(OTHER, {"n": 1}, id="o1")
            c.put(REPL, {"n": 0}, id="r0")
            c.put(REPL, {"n": 1}, id="r1")
            self.expect(w, "put r1", "added", "r1", {"n": 1})
            # and a watch replaces the live query
            w.watch([OTHER])
            c.put(REPL, {"n": 2}, id="r2")
            c.put(OTHER, {"n": 2}, id="o2")
            kind, ev = w.next_event(timeout=WAIT_S)
            self.assertEqual((kind, ev["collection"], ev["id"]), ("changed", OTHER, "o2"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
