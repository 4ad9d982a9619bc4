"""Exercises examples/client.py against a running daemon.

Run by tests/python_client.rs, which starts the daemon and sets:
  SYNCD_SOCKET  the daemon's socket
  SYNCD_CLIENT  path of examples/client.py
  SYNCD_BIN     the syncd binary (its CLI makes writes from another connection)
"""

import importlib.util
import json
import os
import struct
import subprocess
import sys
import unittest

SOCKET = os.environ["SYNCD_SOCKET"]
spec = importlib.util.spec_from_file_location("syncd_client", os.environ["SYNCD_CLIENT"])
client = importlib.util.module_from_spec(spec)
spec.loader.exec_module(client)
Client, SyncdError, ProtocolError = client.Client, client.SyncdError, client.ProtocolError


def connect():
    return Client(SOCKET, app="python-test")


class RoundTrip(unittest.TestCase):
    def test_hello(self):
        with connect() as c:
            self.assertTrue(c.hello["ok"])
            self.assertEqual(c.hello["protocol"], 4)
            self.assertEqual(c.hello["max_frame_bytes"], 16 * 1024 * 1024)
            self.assertTrue(c.hello["client_id"])
            self.assertTrue(c.hello["server"].startswith("syncd "))

    def test_put_get_patch_list_delete(self):
        with connect() as c:
            rid, op_id = c.put("rt", {"title": "buy milk", "tags": ["a"], "n": 1})
            self.assertTrue(rid and op_id and rid != op_id)
            rec = c.get("rt", rid)
            self.assertEqual(rec["data"], {"title": "buy milk", "tags": ["a"], "n": 1})
            self.assertEqual(rec["id"], rid)
            self.assertEqual(rec["collection"], "rt")
            self.assertTrue(rec["pending"])
            for k in ("server_id", "version", "updated_at"):
                self.assertIn(k, rec)

            self.assertEqual(c.put("rt", {"v": 1}, id="b")[0], "b")
            self.assertEqual(c.put("rt", {"v": 2}, id="c")[0], "c")
            # patch: top-level merge; null removes a key
            self.assertEqual(c.patch("rt", rid, {"n": 2, "tags": None, "new": {"x": 1}})[0], rid)
            self.assertEqual(c.get("rt", rid)["data"], {"title": "buy milk", "n": 2, "new": {"x": 1}})

            # list: id order, start inclusive, next = start of the next page
            recs, nxt = c.list("rt", limit=2)
            self.assertEqual([r["id"] for r in recs], sorted([rid, "b"]))
            self.assertEqual(nxt, "c")
            recs, nxt = c.list("rt", start="c")
            self.assertEqual([r["id"] for r in recs], ["c"])
            self.assertIsNone(nxt)

            queued = [op["op_id"] for op in c.queue()]
            self.assertIn(op_id, queued)
            self.assertGreaterEqual(c.status()["queue_depth"], 4)

            _, del_op = c.delete("rt", "b")
            self.assertIn(del_op, [op["op_id"] for op in c.queue()])
            with self.assertRaises(SyncdError) as e:
                c.get("rt", "b")
            self.assertEqual(e.exception.code, "not_found")
            self.assertEqual([r["id"] for r in c.list("rt")[0]], sorted([rid, "c"]))
            with self.assertRaises(SyncdError) as e:
                c.delete("rt", "b")
            self.assertEqual(e.exception.code, "not_found")
            with self.assertRaises(SyncdError) as e:
                c.patch("rt", "missing", {"a": 1})
            self.assertEqual(e.exception.code, "not_found")

    def test_cli(self):
        cmd = [sys.executable, os.environ["SYNCD_CLIENT"], "--socket", SOCKET]
        out = subprocess.run(cmd + ["put", "cli", '{"a":1}', "--id", "x"], capture_output=True, text=True, check=True)
        self.assertEqual(json.loads(out.stdout)["id"], "x")
        out = subprocess.run(cmd + ["get", "cli", "x"], capture_output=True, text=True, check=True)
        self.assertEqual(json.loads(out.stdout)["data"], {"a": 1})
        bad = subprocess.run(cmd + ["put", "cli", "[1]"], capture_output=True, text=True)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("not_an_object", bad.stderr)


class Errors(unittest.TestCase):
    def assertCode(self, code, fn, *args):
        with self.assertRaises(SyncdError) as e:
            fn(*args)
        self.assertEqual(e.exception.code, code, e.exception.message)

    def test_request_errors(self):
        with connect() as c:
            self.assertCode("not_an_object", c.put, "todos", [1, 2])
            self.assertCode("not_an_object", c.put, "todos", "text")
            self.assertCode("bad_collection", c.put, "-bad", {})
            self.assertCode("bad_collection", c.put, "a/b", {})
            self.assertCode("bad_collection", c.watch, ["ok", "no way"])
            self.assertCode("bad_id", c.put, "todos", {}, "a b")
            self.assertCode("bad_id", c.get, "todos", "x" * 129)
            self.assertCode("too_large", c.put, "todos", {"x": "a" * (1024 * 1024)})
            self.assertCode("bad_request", c.request, {"resolve": {"collection": "todos", "id": "x"}})
            # the connection is still fine after all of these
            self.assertEqual(c.status()["version"], c.hello["server"].split(" ")[1])

    def test_invalid_json_frame(self):
        with connect() as c:
            c.send_frame(b'{"id": 7, "request": {"put": ')
            msg = c.recv_message()
            self.assertEqual(msg["error"]["id"], 0)
            self.assertEqual(msg["error"]["error"]["code"], "invalid_json")
            self.assertCode("bad_request", c.request, {"frobnicate": {}})
            self.assertIn("version", c.status())

    def test_garbage_then_valid_request_same_connection(self):
        with connect() as c:
            # Both frames sent before reading anything: the error for the
            # garbage comes first (id 0), then the reply to request 42.
            c.send_frame(b"\xff\x00garbage\x01")
            c.send_frame(json.dumps({"id": 42, "request": {"status": {}}}).encode())
            first, second = c.recv_message(), c.recv_message()
            self.assertEqual(first["error"]["id"], 0)
            self.assertEqual(first["error"]["error"]["code"], "invalid_json")
            self.assertEqual(second["reply"]["id"], 42)
            self.assertIn("status", second["reply"]["body"])

    def test_pipelined_replies_in_order(self):
        with connect() as c:
            reqs = [{"status": {}}, {"get": {"collection": "todos", "id": "nope"}}, {"list": {"collection": "todos"}}]
            for i, r in enumerate(reqs, start=100):
                c.send_frame(json.dumps({"id": i, "request": r}).encode())
            got = [c.recv_message() for _ in reqs]
            self.assertEqual(got[0]["reply"]["id"], 100)
            self.assertEqual(got[1]["error"]["id"], 101)
            self.assertEqual(got[1]["error"]["error"]["code"], "not_found")
            self.assertEqual(got[2]["reply"]["id"], 102)

    def test_oversized_frame(self):
        with connect() as other, connect() as c:
            # Only the header: the daemon rejects on the announced length.
            c.sock.sendall(struct.pack(">I", c.max_frame_bytes + 1))
            msg = c.recv_message()
            self.assertEqual(msg["error"]["id"], 0)
            self.assertEqual(msg["error"]["error"]["code"], "too_large")
            with self.assertRaises(ProtocolError):
                c.recv_frame()  # then the daemon closes this connection
            self.assertIn("queue_depth", other.status())
        with connect() as fresh:
            self.assertIn("queue_depth", fresh.status())

    def test_bad_hello(self):
        for hello, code in [
            ({"app": "t", "protocol": 99, "encoding": "json"}, "unsupported_protocol"),
            ({"app": "t", "protocol": 1, "encoding": "xml"}, "bad_frame"),
            # A version-1 bincode client could not decode version-2 frames.
            ({"app": "t", "protocol": 1, "encoding": "bincode"}, "unsupported_protocol"),
        ]:
            c = Client()
            c.sock = client.socket.socket(client.socket.AF_UNIX)
            c.sock.connect(SOCKET)
            c.send_frame(json.dumps(hello).encode())
            reply = c.recv_message()
            self.assertFalse(reply["ok"])
            self.assertEqual(reply["error"]["code"], code)
            c.close()


class OldJsonClient(unittest.TestCase):
    def test_protocol_1_over_json_is_still_served(self):
        old = client.PROTOCOL_VERSION
        client.PROTOCOL_VERSION = 1
        try:
            with connect() as c:
                self.assertEqual(c.hello["protocol"], 1)
                self.assertIn("queue_depth", c.status())
        finally:
            client.PROTOCOL_VERSION = old


class Scopes(unittest.TestCase):
    def test_subscribe_unsubscribe_scopes(self):
        with connect() as c:
            c.subscribe("py-team")
            rows = {s["name"]: s for s in c.scopes()}
            self.assertTrue(rows["py-team"]["subscribed"])
            self.assertEqual(rows["py-team"]["state"], "initial")
            self.assertFalse(rows["py-team"]["first_sync_done"])
            # This daemon has no backend: a wait could never end.
            with self.assertRaises(SyncdError) as e:
                c.subscribe("py-team", wait=True)
            self.assertEqual(e.exception.code, "no_scopes")
            self.assertIn("py-team", e.exception.message)
            c.unsubscribe("py-team")
            rows = {s["name"]: s for s in c.scopes()}
            self.assertEqual(rows["py-team"]["state"], "unsubscribed")
            for bad in (lambda: c.subscribe("py team"), lambda: c.unsubscribe("")):
                with self.assertRaises(SyncdError) as e:
                    bad()
                self.assertEqual(e.exception.code, "bad_scope")
            with self.assertRaises(SyncdError) as e:
                c.put("notes", {}, scope="py team")
            self.assertEqual(e.exception.code, "bad_scope")

    def test_sync_directions(self):
        # tests/python_client.rs configures "pyprices" (pull) and "pydrafts" (local).
        with connect() as c:
            with self.assertRaises(SyncdError) as e:
                c.put("pyprices", {"p": 1})
            self.assertEqual(e.exception.code, "read_only_collection")
            rid, op_id = c.put("pydrafts", {"d": 1})
            self.assertEqual(op_id, "")
            self.assertEqual(c.get("pydrafts", rid)["data"], {"d": 1})
            with self.assertRaises(SyncdError) as e:
                c.wait_synced(op_id)
            self.assertEqual(e.exception.code, "bad_request")


class Watch(unittest.TestCase):
    def test_watch_sees_cli_write(self):
        with connect() as w:
            w.watch(["watched"])

            def run(*args):
                cmd = [os.environ["SYNCD_BIN"], "--socket", SOCKET, *args]
                return subprocess.run(cmd, check=True, capture_output=True, text=True)

            run("put", "unwatched", '{"skip":true}', "--id", "u")
            rid = run("put", "watched", '{"title":"from cli"}').stdout.strip()
            run("patch", "watched", rid, '{"done":true}')
            run("delete", "watched", rid)
            kinds = []
            for want in ({"title": "from cli"}, {"title": "from cli", "done": True}, None):
                kind, ev = w.next_event(timeout=10)
                kinds.append(kind)
                self.assertEqual((ev["collection"], ev["id"], ev["origin"]), ("watched", rid, "local"))
                self.assertEqual(ev["data"], want)
                self.assertTrue(ev["op_id"])
            self.assertEqual(kinds, ["changed"] * 3)
            # requests still work on a watching connection
            self.assertEqual(w.status()["client_id"], w.hello["client_id"])



class Attachments(unittest.TestCase):
    """attach, read_attachment and detach; this daemon has no backend, so
    the content stays `local`."""

    def test_attach_read_detach(self):
        import hashlib
        import io
        import tempfile

        content = os.urandom(3 * 1024 * 1024 + 5)  # several chunks each way
        sha = hashlib.sha256(content).hexdigest()
        with connect() as c:
            blobs = os.path.join(c.status()["data_dir"], "blobs")
            rid, _ = c.put("pyfiles", {"title": "scan"})
            with tempfile.NamedTemporaryFile() as f:
                f.write(content)
                f.flush()
                self.assertEqual(c.attach("pyfiles", rid, "scan.pdf", f.name, content_type="application/pdf")[0], rid)
            rec = c.get("pyfiles", rid)
            ref = {"content_type": "application/pdf", "length": len(content), "sha256": sha}
            self.assertEqual(rec["data"], {"title": "scan", "_attachments": {"scan.pdf": ref}})
            self.assertEqual(rec["attachments"], [dict(ref, name="scan.pdf", state="local", bytes_done=None)])
            out = io.BytesIO()
            self.assertEqual(c.read_attachment("pyfiles", rid, "scan.pdf", out), ref)
            self.assertEqual(out.getvalue(), content)
            # The same content under another name is stored once.
            c.attach("pyfiles", rid, "copy.pdf", io.BytesIO(content))
            self.assertTrue(os.path.exists(os.path.join(blobs, sha)))
            listed = [r for r in c.list("pyfiles")[0] if r["id"] == rid]
            self.assertEqual([(r["attachments"], set(r["data"]["_attachments"])) for r in listed],
                             [([], {"scan.pdf", "copy.pdf"})])  # list: the references are in data only

            # put keeps the attachments; put and patch may not change them.
            c.put("pyfiles", {"title": "scan 2"}, id=rid)
            self.assertEqual(set(c.get("pyfiles", rid)["data"]["_attachments"]), {"scan.pdf", "copy.pdf"})
            for write in (lambda: c.patch("pyfiles", rid, {"_attachments": None}),
                          lambda: c.put("pyfiles", {"_attachments": {}}, id=rid)):
                with self.assertRaises(SyncdError) as e:
                    write()
                self.assertEqual(e.exception.code, "bad_request")

            # Bad input; an upload abandoned by the app leaves nothing behind.
            for call, code in [
                (lambda: c.attach("pyfiles", "missing", "x", io.BytesIO(b"abc")), "not_found"),
                (lambda: c.attach("pyfiles", rid, "", io.BytesIO(b"abc")), "bad_request"),
                (lambda: c.detach("pyfiles", rid, "nope"), "not_found"),
                (lambda: c.read_attachment("pyfiles", rid, "nope", io.BytesIO()), "not_found"),
            ]:
                with self.assertRaises(SyncdError) as e:
                    call()
                self.assertEqual(e.exception.code, code, e.exception.message)

            class Failing(io.RawIOBase):
                def read(self, n):
                    raise OSError("the file went away")

            with self.assertRaises(OSError):
                c.attach("pyfiles", rid, "broken", Failing())
            self.assertEqual(os.listdir(os.path.join(blobs, "tmp")), [])

            c.detach("pyfiles", rid, "scan.pdf")
            c.detach("pyfiles", rid, "copy.pdf")
            rec = c.get("pyfiles", rid)
            self.assertEqual((rec["data"], rec["attachments"]), ({"title": "scan 2"}, []))

    def test_cli(self):
        cmd = [sys.executable, os.environ["SYNCD_CLIENT"], "--socket", SOCKET]
        subprocess.run(cmd + ["put", "pyclifiles", "{}", "--id", "cli"], check=True, capture_output=True)
        out = subprocess.run(cmd + ["attach", "pyclifiles", "cli", "note.txt", "-", "--type", "text/plain"],
                             input=b"hello", capture_output=True, check=True)
        self.assertEqual(json.loads(out.stdout)["id"], "cli")
        out = subprocess.run(cmd + ["attachment", "pyclifiles", "cli", "note.txt"], capture_output=True, check=True)
        self.assertEqual(out.stdout, b"hello")
        bad = subprocess.run(cmd + ["attachment", "pyclifiles", "cli", "nope"], capture_output=True, text=True)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("not_found", bad.stderr)


class Control(unittest.TestCase):
    """sync, pause/resume, conflicts, resolve, dead letters, metrics; the
    daemon here has no backend, so nothing can sync."""

    def test_sync_pause_resume(self):
        with connect() as c:
            c.put("ctl", {"a": 1})
            c.sync()
            with self.assertRaises(RuntimeError) as e:
                c.sync_wait(timeout=5)
            self.assertIn("no backend configured", str(e.exception))
            c.pause()
            c.resume()
            self.assertGreaterEqual(c.status()["queue_depth"], 1)

    def test_conflicts_resolve_dead_letters(self):
        with connect() as c:
            self.assertEqual(c.conflicts(), [])
            with self.assertRaises(SyncdError):
                c.resolve("ctl", "nothing-parked", take="local")
            self.assertEqual(c.dead_letters(), [])
            for call in (c.retry, c.discard):
                with self.assertRaises(SyncdError) as e:
                    call("01ZZZZZZZZZZZZZZZZZZZZZZZZ")
                self.assertEqual(e.exception.code, "not_found")

    def test_metrics_and_status_fields(self):
        with connect() as c:
            c.put("ctl", {"m": 1})
            text = c.metrics()
            self.assertIn("syncd_writes_total ", text)
            self.assertTrue(text.endswith("# EOF\n"), text[-40:])
            s = c.status()
            for key in ("hint", "hints", "socket", "pid", "uptime_s", "pending_by_collection"):
                self.assertIn(key, s)
            self.assertEqual(s["socket"], SOCKET)
            self.assertIn("local_only", c.get("ctl", c.put("ctl", {})[0]))

    def test_cli_control_commands_and_config_socket(self):
        import tempfile

        env = {k: v for k, v in os.environ.items() if k != "SYNCD_SOCKET"}
        base = [sys.executable, os.environ["SYNCD_CLIENT"]]
        with tempfile.TemporaryDirectory() as d:
            cfg = os.path.join(d, "daemon.toml")
            # Invalid for the daemon (unknown key; then not even TOML), yet it
            # names the socket: --config must still find the daemon.
            for text in (f'[daemon]\nsocket = "{SOCKET}"\nbogus = 1\n', f'[daemon]\nsocket = "{SOCKET}"\n[sync\n'):
                with open(cfg, "w") as f:
                    f.write(text)
                out = subprocess.run(base + ["--config", cfg, "status"], capture_output=True, text=True, env=env)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertIn("state", json.loads(out.stdout))
        run = lambda *a: subprocess.run(base + ["--socket", SOCKET] + list(a), capture_output=True, text=True)
        for args in (["sync"], ["pause"], ["resume"]):
            out = run(*args)
            self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(run("conflicts").stdout, "")  # one JSON line per conflict: none
        self.assertEqual(run("dead-letters").stdout, "")
        self.assertEqual(run("retry", "01ZZZZZZZZZZZZZZZZZZZZZZZZ").returncode, 1)
        self.assertIn("syncd_queue_depth", run("metrics").stdout)
        self.assertEqual(run("put", "ctl", "{}").returncode, 0)
        out = run("sync", "--wait", "--timeout", "2")
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn("no backend configured", out.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
