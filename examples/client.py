#!/usr/bin/env python3
"""A small syncd client in plain Python 3 (standard library only).

It speaks the JSON encoding of the local protocol described in
docs/ipc-protocol.md: 4-byte big-endian length-prefixed frames over the
daemon's Unix socket, a JSON hello, then one JSON request at a time.

As a library::

    from client import Client, SyncdError
    with Client("/run/user/1000/syncd/syncd.sock") as c:
        rid, op_id = c.put("todos", {"title": "buy milk"})
        print(c.get("todos", rid)["data"])
        page = c.query("todos", {"done": False}, sort=["due"], limit=50)
        print([r["id"] for r in page["records"]], page["next"])
        c.attach("todos", rid, "photo.jpg", "photo.jpg", content_type="image/jpeg")
        with open("copy.jpg", "wb") as out:
            c.read_attachment("todos", rid, "photo.jpg", out)

As a command::

    python3 examples/client.py --socket PATH put todos '{"a":1}'
    python3 examples/client.py get todos 01J...      # socket from SYNCD_SOCKET or the default
    python3 examples/client.py --config /etc/syncd/daemon.toml status   # the socket that file names
    python3 examples/client.py sync --wait --timeout 30
    python3 examples/client.py query todos '{"done":false}' --sort due --sort title:desc [--limit 50] [--cursor C]
    python3 examples/client.py query todos '{"done":false}' --sort due --limit 20 --watch
    python3 examples/client.py attach todos 01J... photo.jpg ./photo.jpg --type image/jpeg   # or - for stdin
    python3 examples/client.py attachment todos 01J... photo.jpg [-o copy.jpg]             # stdout by default
    python3 examples/client.py detach todos 01J... photo.jpg
"""

import argparse
import base64
import collections
import hashlib
import json
import os
import re
import select
import socket
import struct
import sys
import time

# Version 4 of the local protocol (attachments); a daemon also takes 1 to 3
# over JSON, and the frames are the same (docs/ipc-protocol.md §3, "Versions
# and compatibility").
PROTOCOL_VERSION = 4

# Most bytes of content per attach_chunk (as the Rust client sends) and per
# read_attachment (the daemon's own cap); both shrink to fit the hello's
# max_frame_bytes, since in JSON the bytes travel as base64 (4/3 as long).
ATTACH_CHUNK = 256 * 1024
READ_CHUNK = 1024 * 1024


class SyncdError(Exception):
    """The daemon answered with an error frame (see docs: "Error codes")."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ProtocolError(Exception):
    """The connection broke or the daemon sent something unexpected."""


def default_socket_path(ignore_env=False):
    """$SYNCD_SOCKET, else $XDG_RUNTIME_DIR/syncd/syncd.sock, else /tmp/syncd-UID/syncd.sock."""
    if os.environ.get("SYNCD_SOCKET") and not ignore_env:
        return os.environ["SYNCD_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "syncd", "syncd.sock")
    return f"/tmp/syncd-{os.getuid()}/syncd.sock"


def socket_from_config(path):
    """The socket a daemon.toml names (`[daemon] socket`), relative paths
    taken from the file's directory; the default path when it names none.

    Lenient on purpose, like the syncd CLI: a file the running daemon
    rejected (an invalid edit) still names the socket it listens on."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    named = None
    try:
        import tomllib  # Python 3.11+

        named = tomllib.loads(text).get("daemon", {}).get("socket")
    except Exception:  # no tomllib, or not valid TOML: find the line
        section = None
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
                continue
            m = re.match(r'socket\s*=\s*"([^"]*)"', line)
            if section == "[daemon]" and m:
                named = m.group(1)
                break
    if not named:
        return default_socket_path(ignore_env=True)
    if not os.path.isabs(named):
        named = os.path.join(os.path.dirname(os.path.abspath(path)), named)
    return named


class Client:
    """One connection to the daemon. Not thread-safe: use one per thread.

    Requests are sent one at a time; watch events that arrive while waiting
    for a reply are queued for next_event().
    """

    def __init__(self, path=None, app="python-example"):
        self.sock = None
        self.hello = None
        self.max_frame_bytes = 16 * 1024 * 1024
        self._next_id = 1
        self._events = collections.deque()
        if path is not None:
            self.connect(path, app)

    def connect(self, path, app="python-example"):
        """Connects to the socket at `path` and does the hello exchange."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        hello = {"app": app, "protocol": PROTOCOL_VERSION, "encoding": "json"}
        self.send_frame(json.dumps(hello).encode())
        reply = json.loads(self.recv_frame())
        if not reply.get("ok"):
            err = reply.get("error") or {"code": "internal", "message": "hello refused"}
            self.close()
            raise SyncdError(err["code"], err["message"])
        self.hello = reply
        self.max_frame_bytes = reply["max_frame_bytes"]
        return self

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- framing ---------------------------------------------------------

    def send_frame(self, body):
        """Sends one frame: a 4-byte big-endian length, then `body` (bytes)."""
        if len(body) > self.max_frame_bytes:
            raise ValueError(f"frame of {len(body)} bytes exceeds max_frame_bytes {self.max_frame_bytes}")
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def _recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                break
            buf += chunk
        return bytes(buf)

    def recv_frame(self):
        """Reads one frame body; raises ProtocolError if the daemon closed."""
        head = self._recv_exact(4)
        if len(head) < 4:
            raise ProtocolError("daemon closed the connection")
        (n,) = struct.unpack(">I", head)
        body = self._recv_exact(n)
        if len(body) < n:
            raise ProtocolError("daemon closed the connection in the middle of a frame")
        return body

    def recv_message(self):
        """Reads and decodes one server frame: {"reply"|"error"|"event": ...}."""
        return json.loads(self.recv_frame())

    # -- requests --------------------------------------------------------

    def request(self, request):
        """Sends `request` (e.g. {"status": {}}) and returns the reply body.

        Raises SyncdError for an error frame with this id (or id 0: the
        daemon could not decode the request)."""
        rid = self._next_id
        self._next_id += 1
        self.send_frame(json.dumps({"id": rid, "request": request}).encode())
        while True:
            msg = self.recv_message()
            if "event" in msg:
                self._events.append(msg["event"])
            elif "reply" in msg and msg["reply"]["id"] == rid:
                return msg["reply"]["body"]
            elif "error" in msg and msg["error"]["id"] in (rid, 0):
                err = msg["error"]["error"]
                raise SyncdError(err["code"], err["message"])
            else:
                raise ProtocolError(f"unexpected frame while waiting for reply {rid}: {msg}")

    @staticmethod
    def _written(body):
        w = body["written"]
        return w["id"], w["op_id"]

    def put(self, collection, data, id=None, scope=None):
        """Creates or replaces a record; returns (id, op_id). The daemon mints an id when None.
        `scope` (backends with scopes): the scope to create the record in, or to move it to.

        op_id is "" in a collection with sync = "local" (nothing is queued); a
        collection with sync = "pull" raises SyncdError("read_only_collection")
        (so do patch and delete)."""
        req = {"collection": collection, "data": data}
        if id is not None:
            req["id"] = id
        if scope is not None:
            req["scope"] = scope
        return self._written(self.request({"put": req}))

    def patch(self, collection, id, data):
        """Merges top-level fields of `data` (None removes a key); returns (id, op_id)."""
        return self._written(self.request({"patch": {"collection": collection, "id": id, "data": data}}))

    def delete(self, collection, id):
        """Deletes a record; returns (id, op_id)."""
        return self._written(self.request({"delete": {"collection": collection, "id": id}}))

    def get(self, collection, id):
        """Returns the record view: {collection, id, data, server_id, version, updated_at, pending, local_only, scope, attachments}.

        `attachments` lists the record's attachments: {name, content_type,
        length, sha256, state, bytes_done}, state being local, uploading,
        synced, remote or downloading (list and query leave it empty; their
        documents hold the references in data["_attachments"])."""
        return self.request({"get": {"collection": collection, "id": id}})["record"]

    def list(self, collection, start=None, limit=None):
        """One page in id order from `start` (inclusive); returns (records, next_start or None)."""
        req = {"collection": collection}
        if start is not None:
            req["start"] = start
        if limit is not None:
            req["limit"] = limit
        page = self.request({"list": req})["records"]
        return page["records"], page["next"]

    def status(self):
        return self.request({"status": {}})["status"]

    def queue(self, limit=None):
        """Pending operations in queue order."""
        return self.request({"queue": {} if limit is None else {"limit": limit}})["ops"]

    def watch(self, collections=()):
        """Subscribes this connection to change events (no collections: all);
        replaces a live query (watch_query)."""
        self.request({"watch": {"collections": list(collections)}})

    def next_event(self, timeout=None):
        """Returns the next watch event as (kind, fields), e.g. ("changed", {...}).

        With a timeout (seconds), raises TimeoutError if none arrives in time."""
        while not self._events:
            if timeout is not None:
                ready, _, _ = select.select([self.sock], [], [], timeout)
                if not ready:
                    raise TimeoutError("no event within %ss" % timeout)
            msg = self.recv_message()
            if "event" in msg:
                self._events.append(msg["event"])
            elif "error" in msg:
                err = msg["error"]["error"]
                raise SyncdError(err["code"], err["message"])
        ((kind, fields),) = self._events.popleft().items()
        return kind, fields

    def wait_synced(self, op_id):
        """Blocks until the op is on the server; SyncdError("dead_lettered") if rejected."""
        return self.request({"wait_synced": {"op_id": op_id}})["synced"]

    # -- attachments (docs/ipc-protocol.md §18) ----------------------------

    def _chunk_bytes(self, most):
        """Bytes of content that fit one frame as base64, with room for the
        rest of the frame (ids, names, the content type), at most `most`."""
        return max(1, min(most, (self.max_frame_bytes - 2048) * 3 // 4))

    def attach(self, collection, id, name, path_or_fileobj, content_type=None):
        """Attaches a file to a record as `name` (replacing one of that name);
        returns (id, op_id) of the queued write, as put does.

        `path_or_fileobj` is a path, or a binary file object (anything with read(n)
        returning bytes: an open file, sys.stdin.buffer, io.BytesIO). The
        content goes in chunks that fit max_frame_bytes; the client hashes
        what it read and the daemon checks the hash before it stores it. The
        record must exist (SyncdError "not_found", at the end); content over
        [sync] max_attachment_bytes raises "too_large", a bad name or content
        type "bad_request". An upload that fails, or whose connection closes
        before its end, is dropped: the record is not changed."""
        if isinstance(path_or_fileobj, (str, bytes, os.PathLike)):
            with open(path_or_fileobj, "rb") as f:
                return self.attach(collection, id, name, f, content_type)
        begin = {"collection": collection, "id": id, "name": name}
        if content_type is not None:
            begin["content_type"] = content_type
        upload = self.request({"attach_begin": begin})["upload"]["upload"]
        digest = hashlib.sha256()
        size = self._chunk_bytes(ATTACH_CHUNK)
        try:
            while True:
                data = path_or_fileobj.read(size)
                if not data:
                    break
                digest.update(data)
                self.request({"attach_chunk": {"upload": upload, "data": base64.b64encode(data).decode("ascii")}})
        except SyncdError:
            raise  # the daemon ended the upload itself (too_large, a disk error)
        except BaseException:
            # Our side failed (reading the file, an interrupt): drop the
            # upload if the connection still works; closing it would too.
            try:
                self.request({"attach_abort": {"upload": upload}})
            except (OSError, SyncdError, ProtocolError):
                pass
            raise
        return self._written(self.request({"attach_end": {"upload": upload, "sha256": digest.hexdigest()}}))

    def detach(self, collection, id, name):
        """Removes attachment `name` from a record; returns (id, op_id).
        SyncdError "not_found" when the record or the attachment does not exist."""
        return self._written(self.request({"detach": {"collection": collection, "id": id, "name": name}}))

    def read_attachment(self, collection, id, name, out_fileobj):
        """Writes the content of attachment `name` to the binary file object
        `out_fileobj`; returns {content_type, length, sha256}.

        When the content is not on this device yet (it came with a pulled
        record and was not downloaded, or was evicted), the daemon downloads
        it first: this waits as long as that takes, and raises SyncdError
        "unavailable" when no backend can give it now. The bytes written are
        checked against the attachment's SHA-256; ProtocolError if the
        attachment was replaced while it was being read (read it again)."""
        size = self._chunk_bytes(READ_CHUNK)
        digest = hashlib.sha256()
        offset, first = 0, None
        while True:
            req = {"collection": collection, "id": id, "name": name, "offset": offset, "length": size}
            chunk = self.request({"read_attachment": req})["attachment_chunk"]
            if first is None:
                first = chunk
            elif chunk["sha256"] != first["sha256"]:
                raise ProtocolError(f"attachment {name!r} of {collection}/{id} changed while being read; read it again")
            data = base64.b64decode(chunk["data"])
            out_fileobj.write(data)
            digest.update(data)
            offset += len(data)
            if offset >= chunk["length"] or not data:
                break
        if offset != first["length"] or digest.hexdigest() != first["sha256"]:
            raise ProtocolError(f"attachment {name!r} of {collection}/{id}: read {offset} bytes that do not match its length and SHA-256")
        return {"content_type": first["content_type"], "length": first["length"], "sha256": first["sha256"]}

    # -- local queries (docs/ipc-protocol.md §17) --------------------------

    @staticmethod
    def _sort(sort):
        """Sort items as the wire wants them: "due", "due:desc" ("due:asc")
        or {"field": "due", "desc": True}."""
        out = []
        for s in sort:
            if isinstance(s, dict):
                out.append({"field": s["field"], "desc": bool(s.get("desc", False))})
                continue
            field, _, way = s.rpartition(":")
            if not field or way not in ("asc", "desc"):  # no direction: all of it is the field
                field, way = s, "asc"
            out.append({"field": field, "desc": way == "desc"})
        return out

    def _query_req(self, collection, selector, sort, limit):
        req = {"collection": collection, "selector": {} if selector is None else selector, "sort": self._sort(sort)}
        if limit is not None:
            req["limit"] = limit
        return req

    def query(self, collection, selector=None, sort=(), limit=None, cursor=None):
        """One page of the records that match a Mango `selector` (None: all),
        in `sort` order (id order without one); returns {records, next, plan}.

        `next` is None on the last page, else the cursor for the next one
        (pass it back with the same selector and sort). Each page is read from a snapshot
        of its own. A bad selector, sort field or cursor raises
        SyncdError("bad_query")."""
        req = self._query_req(collection, selector, sort, limit)
        if cursor is not None:
            req["cursor"] = cursor
        return self.request({"query": req})["query_result"]

    def query_all(self, collection, selector=None, sort=(), page=1000, cursor=None):
        """Every matching record view (after `cursor`, if given), following
        the cursors `page` records at a time."""
        while True:
            p = self.query(collection, selector, sort, limit=page, cursor=cursor)
            yield from p["records"]
            cursor = p["next"]
            if cursor is None:
                return

    def watch_query(self, collection, selector=None, sort=(), limit=None):
        """Makes this connection's feed a live query (it replaces a watch).

        next_event() then returns ("query", {"result": {...}}) first, then
        ("query", {"added"|"changed"|"removed": {...}}) as commits change the
        result; a "result" with resync true replaces everything held. Without
        a limit the whole result must fit one reply (SyncdError "too_large")."""
        self.request({"watch_query": self._query_req(collection, selector, sort, limit)})

    # -- sync control ----------------------------------------------------

    def sync(self):
        """Wakes the sync worker now (push, then pull)."""
        self.request({"sync": {}})

    def sync_wait(self, timeout=None, poll=0.1):
        """sync(), then waits until the queue is empty; returns the final status.

        Raises TimeoutError after `timeout` seconds (the writes stay queued),
        RuntimeError (with the hint) when syncing cannot go on (paused, auth
        error, no backend)."""
        self.sync()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            s = self.status()
            if s["queue_depth"] == 0:
                return s
            if s["state"] in ("paused", "auth_error") or (s["state"] == "offline" and s["backend"] is None):
                raise RuntimeError(s.get("hint") or s["state"])
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{s['queue_depth']} op(s) still queued after {timeout}s")
            time.sleep(poll)

    def pause(self):
        """Stops syncing (survives a daemon restart)."""
        self.request({"pause": {}})

    def resume(self):
        self.request({"resume": {}})

    # -- conflicts and dead letters --------------------------------------

    def conflicts(self):
        """Conflicts parked by the manual strategy."""
        return self.request({"conflicts": {}})["conflicts"]

    def resolve(self, collection, id, take=None, data=None):
        """Resolves a parked conflict: take="local"|"server", or data={...}."""
        req = {"collection": collection, "id": id}
        if take is not None:
            req["take"] = take
        if data is not None:
            req["data"] = data
        return self.request({"resolve": req})

    def dead_letters(self):
        """Operations the server rejected for good (each has op_id, last_error ...)."""
        return self.request({"dead_letters": {}})["ops"]

    def retry(self, op_id):
        """Puts a dead-lettered op back on the queue.

        Refused, the dead letter staying, in a collection this device only
        pulls (SyncdError "read_only_collection") or that never leaves it
        (SyncdError "local_collection")."""
        return self.request({"retry": {"op_id": op_id}})

    def discard(self, op_id):
        """Drops a dead-lettered op (the record stays, `local_only` if never synced)."""
        return self.request({"discard": {"op_id": op_id}})

    def metrics(self):
        """Every metric as OpenMetrics text (what `syncd metrics` prints)."""
        return self.request({"metrics": {}})["metrics"]["text"]

    def subscribe(self, scope, wait=False):
        """Syncs `scope` (backends with scopes); with wait, returns once its first sync is done.

        A wait that could never end raises at once (the choice is stored all
        the same): SyncdError "no_scopes" without a backend or with one
        without scopes, "permission_denied" when the session gives no read
        access to the scope (also when a revocation takes it during the
        wait). A bad name raises SyncdError "bad_scope"."""
        self.request({"subscribe": {"scope": scope, "wait": wait}})

    def unsubscribe(self, scope):
        """Stops syncing `scope`; its records without pending writes leave this device."""
        self.request({"unsubscribe": {"scope": scope}})

    def scopes(self):
        """Every scope known: {name, access, subscribed, state, remaining, records, first_sync_done}."""
        return self.request({"scopes": {}})["scopes"]


def main(argv=None):
    p = argparse.ArgumentParser(description="Talk to syncd over its socket (JSON encoding).")
    p.add_argument("--socket", help="socket path (else --config's, else $SYNCD_SOCKET, else the default)")
    p.add_argument("--config", help="daemon.toml whose [daemon] socket to use (beats $SYNCD_SOCKET)")
    sub = p.add_subparsers(dest="cmd", required=True)
    commands = {
        "put": ["collection", "json", "--id", "--scope"],
        "patch": ["collection", "id", "json"],
        "get": ["collection", "id"],
        "delete": ["collection", "id"],
        "list": ["collection", "--start", "--limit"],
        "status": [],
        "queue": ["--limit"],
        "watch": ["collections"],
        "wait-synced": ["op_id"],
        "sync": ["--wait", "--timeout"],
        "pause": [],
        "resume": [],
        "conflicts": [],
        "resolve": ["collection", "id", "--take", "--data"],
        "dead-letters": [],
        "retry": ["op_id"],
        "discard": ["op_id"],
        "metrics": [],
        "subscribe": ["scope", "--wait", "--timeout"],
        "unsubscribe": ["scope"],
        "scopes": [],
        "query": ["collection", "selector", "--sort", "--limit", "--cursor", "--watch"],
        "attach": ["collection", "id", "name", "file", "--type"],
        "detach": ["collection", "id", "name"],
        "attachment": ["collection", "id", "name", ("-o", "--output")],
    }
    kinds = {
        "--limit": {"type": int},
        "--timeout": {"type": float},
        "--wait": {"action": "store_true"},
        "--take": {"choices": ["local", "server"]},
        "collections": {"nargs": "*"},
        "selector": {"nargs": "?", "default": "{}"},
        "--sort": {"action": "append", "default": [], "metavar": "FIELD[:desc]"},
        "--watch": {"action": "store_true"},
        "file": {"help": "the file to attach, or - for stdin"},
        "--type": {"metavar": "MIME", "help": "content type (default application/octet-stream)"},
        "--output": {"metavar": "FILE", "help": "write here instead of stdout"},
    }
    for name, args in commands.items():
        s = sub.add_parser(name)
        for arg in args:
            names = arg if isinstance(arg, tuple) else (arg,)
            s.add_argument(*names, **kinds.get(names[-1], {}))
    a = p.parse_args(argv)
    data = None
    for key in ("json", "data", "selector"):
        if vars(a).get(key) is not None:
            try:
                data = json.loads(vars(a)[key])
            except ValueError as e:
                p.error(f"invalid JSON argument: {e}")

    def out(v):
        print(json.dumps(v), flush=True)

    # Flags beat the environment, as in the syncd CLI: --socket, then
    # --config, then $SYNCD_SOCKET, then the default path.
    path = a.socket
    if path is None and a.config:
        try:
            path = socket_from_config(a.config)
        except OSError as e:
            p.error(f"cannot read --config {a.config}: {e}")
    path = path or os.environ.get("SYNCD_SOCKET") or default_socket_path()
    try:
        c = Client(path, app="client.py")
    except OSError as e:
        print(f"client.py: cannot reach syncd at {path}: {e}", file=sys.stderr)
        return 3

    def subscribe():
        if a.wait and a.timeout is not None:
            c.sock.settimeout(a.timeout)
            try:
                c.subscribe(a.scope, wait=True)
            except OSError as e:
                raise TimeoutError(f"scope {a.scope}: first sync not done after {a.timeout} s; it stays subscribed") from e
        else:
            c.subscribe(a.scope, wait=a.wait)

    def watch():
        c.watch(a.collections)
        while True:
            kind, fields = c.next_event()
            yield {kind: fields}

    def query():
        if a.watch:
            c.watch_query(a.collection, data, a.sort, a.limit)
            while True:
                kind, fields = c.next_event()
                yield {kind: fields}
        if a.limit is None:
            yield from c.query_all(a.collection, data, a.sort, cursor=a.cursor)
            return
        p = c.query(a.collection, data, a.sort, a.limit, a.cursor)
        yield from p["records"]
        if p["next"] is not None:
            print(f"client.py: more records follow; continue with --cursor {p['next']}", file=sys.stderr)

    def attachment():
        # To a file: written beside it and renamed into place once complete.
        if a.output is None:
            c.read_attachment(a.collection, a.id, a.name, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        tmp = a.output + ".part"
        try:
            with open(tmp, "wb") as f:
                c.read_attachment(a.collection, a.id, a.name, f)
            os.replace(tmp, a.output)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    run = {
        "put": lambda: [c.put(a.collection, data, id=a.id, scope=a.scope)],
        "patch": lambda: [c.patch(a.collection, a.id, data)],
        "delete": lambda: [c.delete(a.collection, a.id)],
        "get": lambda: [c.get(a.collection, a.id)],
        "list": lambda: c.list(a.collection, a.start, a.limit)[0],
        "status": lambda: [c.status()],
        "queue": lambda: c.queue(a.limit),
        "watch": watch,
        "wait-synced": lambda: [c.wait_synced(a.op_id)],
        "sync": lambda: [c.sync_wait(a.timeout) if a.wait else c.sync() or {}],
        "pause": lambda: [c.pause() or {}],
        "resume": lambda: [c.resume() or {}],
        "conflicts": lambda: c.conflicts(),
        "resolve": lambda: [c.resolve(a.collection, a.id, take=a.take, data=data)],
        "dead-letters": lambda: c.dead_letters(),
        "retry": lambda: [c.retry(a.op_id)],
        "discard": lambda: [c.discard(a.op_id)],
        "subscribe": lambda: [subscribe() or {}],
        "unsubscribe": lambda: [c.unsubscribe(a.scope) or {}],
        "scopes": lambda: c.scopes(),
        "query": query,
        "attach": lambda: [c.attach(a.collection, a.id, a.name, sys.stdin.buffer if a.file == "-" else a.file, a.type)],
        "detach": lambda: [c.detach(a.collection, a.id, a.name)],
    }
    try:
        with c:
            if a.cmd == "metrics":
                sys.stdout.write(c.metrics())
                return 0
            if a.cmd == "attachment":
                attachment()
                return 0
            for v in run[a.cmd]():
                out({"id": v[0], "op_id": v[1]} if isinstance(v, tuple) else v)
    except TimeoutError as e:
        print(f"client.py: {e}", file=sys.stderr)
        return 4
    except OSError as e:  # the file to attach, or the one to write an attachment to
        print(f"client.py: {e}", file=sys.stderr)
        return 1
    except (SyncdError, ProtocolError, RuntimeError) as e:
        print(f"client.py: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
