// A tiny PouchDB "app" for the CouchDB coexistence tests
// (tests/couchdb_pouchdb.rs, driven by tests/common_couch/pouch_app.rs):
// what a browser or Node app built on PouchDB does with the database syncd
// also syncs to. It keeps a local in-memory database and a live two-way
// sync (`db.sync(url, {live: true, retry: true})`) with the CouchDB
// database given on the command line.
//
//   NODE_PATH=<npm dir>/node_modules node pouch_app.js URL
//
// Needs pouchdb-core, pouchdb-adapter-memory, pouchdb-adapter-http and
// pouchdb-replication on NODE_PATH (pouchdb-server's install has them).
//
// Protocol: one JSON command a line on stdin, one JSON answer a line on
// stdout, in order. A command's `seq`, if given, is echoed in its answer.
// Answers are {"ok": true, ...} or {"ok": false, "status", "error",
// "reason"} (a PouchDB error's status/name/message). Once the database and
// the sync are set up it prints {"ready": true}. Progress and sync events go
// to stderr.
//
//   {"cmd": "get", "id": ID}       → {"doc"}: the winning revision, with
//                                    `_conflicts` when there are any
//   {"cmd": "leaves", "id": ID}    → {"leaves": [...]}: every leaf revision
//                                    (open_revs=all), tombstones included
//   {"cmd": "put", "doc": DOC}     → {"id", "rev"}: DOC as given (`_rev`
//                                    included if it has one)
//   {"cmd": "delete", "id": ID[, "rev": REV]}
//                                  → {"id", "rev"}: deletes REV, or the
//                                    current winner when no rev is given
//   {"cmd": "all"}                 → {"docs": [...]}: every live document,
//                                    with `_conflicts`
//   {"cmd": "offline"}             → {}: the live sync is cancelled (and has
//                                    completed) — the app is offline
//   {"cmd": "online"}              → {}: a new live sync is started
//   {"cmd": "settle"[, "timeout_ms": N]}
//                                  → {"rounds"}: waits until the local and
//                                    the remote database hold the same leaf
//                                    revisions of every document (compares
//                                    both `_changes?style=all_docs` feeds);
//                                    refused while offline
//   {"cmd": "status"}              → {"online", "sync_state", "last_error"}
//   {"cmd": "quit"}                → {}, then the process exits 0
//
// Unexpected failures (an exception outside a command) are printed as
// {"ok": false, "fatal": true, ...} on stdout and the process exits 1.
'use strict';

const readline = require('readline');

const SETTLE_TIMEOUT_MS = 60000;
const SETTLE_POLL_MS = 50;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function log(...args) {
  process.stderr.write(`[pouch_app ${new Date().toISOString()}] ${args.join(' ')}\n`);
}

function errorAnswer(e) {
  return {
    ok: false,
    status: (e && e.status) || 500,
    error: (e && (e.name || e.error)) || 'error',
    reason: (e && (e.message || e.reason)) || String(e),
  };
}

function fatal(e) {
  const a = errorAnswer(e);
  a.fatal = true;
  a.stack = e && e.stack ? String(e.stack) : undefined;
  out(a);
  log('fatal:', e && e.stack ? e.stack : e);
  process.exit(1);
}

process.on('uncaughtException', fatal);
process.on('unhandledRejection', fatal);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class App {
  constructor(PouchDB, url) {
    this.local = new PouchDB('pouch_app', { adapter: 'memory' });
    this.remote = new PouchDB(url);
    this.url = url;
    this.sync = null;
    this.syncState = 'offline';
    this.lastError = null;
  }

  goOnline() {
    if (this.sync) return;
    const s = this.local.sync(this.remote, { live: true, retry: true });
    this.sync = s;
    this.syncState = 'starting';
    s.on('active', () => {
      this.syncState = 'active';
    });
    s.on('paused', (err) => {
      this.syncState = 'paused';
      if (err) {
        this.lastError = errorAnswer(err);
        log('sync paused with error:', JSON.stringify(this.lastError));
      }
    });
    s.on('change', (info) => {
      const docs = (info.change && info.change.docs) || [];
      log(`sync ${info.direction}: ${docs.map((d) => `${d._id}@${d._rev}`).join(' ')}`);
    });
    s.on('denied', (err) => {
      this.lastError = errorAnswer(err);
      log('sync denied:', JSON.stringify(err));
    });
    s.on('error', (err) => {
      this.lastError = errorAnswer(err);
      this.syncState = 'error';
      log('sync error:', JSON.stringify(this.lastError));
    });
    s.on('complete', () => {
      if (this.sync === s) this.syncState = 'complete';
    });
  }

  async goOffline() {
    const s = this.sync;
    if (!s) return;
    this.sync = null;
    const done = new Promise((resolve) => s.once('complete', resolve));
    s.cancel();
    await done;
    this.syncState = 'offline';
  }

  // id → sorted leaf revisions, from a database's whole changes feed.
  static async leafMap(db) {
    const res = await db.changes({ since: 0, style: 'all_docs' });
    const m = new Map();
    for (const r of res.results) {
      m.set(r.id, r.changes.map((c) => c.rev).sort().join(','));
    }
    return m;
  }

  async inStep() {
    const [a, b] = await Promise.all([App.leafMap(this.local), App.leafMap(this.remote)]);
    if (a.size !== b.size) return false;
    for (const [id, revs] of a) {
      if (b.get(id) !== revs) return false;
    }
    return true;
  }

  async settle(timeoutMs) {
    if (!this.sync) {
      throw Object.assign(new Error('offline: settle needs the live sync'), {
        status: 409,
        name: 'offline',
      });
    }
    const deadline = Date.now() + timeoutMs;
    for (let rounds = 1; ; rounds++) {
      if (await this.inStep()) return { rounds };
      if (Date.now() > deadline) {
        throw Object.assign(new Error(`not in step after ${timeoutMs} ms`), {
          status: 504,
          name: 'timeout',
        });
      }
      await sleep(SETTLE_POLL_MS);
    }
  }

  async handle(c) {
    switch (c.cmd) {
      case 'get':
        return { doc: await this.local.get(c.id, { conflicts: true }) };
      case 'leaves':
        return { leaves: await this.local.get(c.id, { open_revs: 'all' }) };
      case 'put': {
        const r = await this.local.put(c.doc);
        return { id: r.id, rev: r.rev };
      }
      case 'delete': {
        const rev = c.rev || (await this.local.get(c.id))._rev;
        const r = await this.local.remove(c.id, rev);
        return { id: r.id, rev: r.rev };
      }
      case 'all': {
        const r = await this.local.allDocs({ include_docs: true, conflicts: true });
        return { docs: r.rows.map((row) => row.doc) };
      }
      case 'offline':
        await this.goOffline();
        return {};
      case 'online':
        this.goOnline();
        return {};
      case 'settle':
        return this.settle(c.timeout_ms || SETTLE_TIMEOUT_MS);
      case 'status':
        return { online: !!this.sync, sync_state: this.syncState, last_error: this.lastError };
      default:
        throw Object.assign(new Error(`unknown command ${JSON.stringify(c.cmd)}`), {
          status: 400,
          name: 'bad_command',
        });
    }
  }
}

async function main() {
  const url = process.argv[2];
  if (!url) {
    out({ ok: false, fatal: true, status: 400, error: 'usage', reason: 'usage: node pouch_app.js URL' });
    process.exit(2);
  }
  const PouchDB = require('pouchdb-core')
    .plugin(require('pouchdb-adapter-memory'))
    .plugin(require('pouchdb-adapter-http'))
    .plugin(require('pouchdb-replication'));
  const app = new App(PouchDB, url);
  await app.remote.info(); // fails early (fatal) if the database is not there
  app.goOnline();
  out({ ready: true });

  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of rl) {
    if (!line.trim()) continue;
    let c;
    try {
      c = JSON.parse(line);
    } catch (e) {
      out({ ok: false, status: 400, error: 'bad_json', reason: String(e.message) });
      continue;
    }
    const seq = c && c.seq;
    if (c && c.cmd === 'quit') {
      await app.goOffline();
      out({ ok: true, seq });
      process.exit(0);
    }
    let answer;
    try {
      answer = Object.assign({ ok: true }, await app.handle(c));
    } catch (e) {
      answer = errorAnswer(e);
    }
    answer.seq = seq;
    out(answer);
  }
  // stdin closed: the test is gone.
  await app.goOffline();
  process.exit(0);
}

main().catch(fatal);
