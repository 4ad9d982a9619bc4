// The PouchDB baseline of the harness's `couch` scenario (bench/pouch.rs
// runs it, bench/couch.rs compares): PouchDB's own replication, leveldb
// adapter on this side, to or from a database on the same pouchdb-server
// the daemon syncs with. Issue 26 asks syncd's CouchDB drain to be at least
// as fast as this.
//
//   node pouch_replicate.js push DIR URL N   N small documents put into a
//                                            fresh leveldb db at DIR (not
//                                            timed), then db.replicate.to(URL)
//   node pouch_replicate.js pull DIR URL     db.replicate.from(URL) into a
//                                            fresh leveldb db at DIR
//
// Needs NODE_PATH = the node_modules holding pouchdb-core,
// pouchdb-adapter-leveldb, pouchdb-adapter-http and pouchdb-replication
// (pouchdb-server's install has them). Prints one JSON line on stdout:
// {"op", "docs", "secs", "cpu_secs"}: docs now on the receiving side, the
// replication's wall time and this process's CPU over it. On any failure it
// prints the reason on stderr and exits 1.
'use strict';

const USAGE = 'usage: node pouch_replicate.js push DIR URL N | pull DIR URL';
// Documents per bulkDocs call while filling the local db.
const FILL_BATCH = 1000;

function pouchdb() {
  return require('pouchdb-core')
    .plugin(require('pouchdb-adapter-leveldb'))
    .plugin(require('pouchdb-adapter-http'))
    .plugin(require('pouchdb-replication'));
}

// The same shape as the daemon's documents (bench/loops.rs `doc`).
function doc(i) {
  return { title: 'buy milk', done: false, client: 0, n: i };
}

async function fill(db, n) {
  for (let i = 0; i < n; i += FILL_BATCH) {
    const docs = [];
    for (let k = i; k < Math.min(n, i + FILL_BATCH); k++) docs.push(doc(k));
    const res = await db.bulkDocs(docs);
    const failed = res.filter((r) => r.error);
    if (failed.length) throw new Error(`local bulkDocs failed: ${JSON.stringify(failed[0])}`);
  }
}

// Runs `replicate` timed: wall seconds and this process's CPU seconds.
async function timed(replicate) {
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const res = await replicate();
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  if (!res.ok || res.doc_write_failures) {
    throw new Error(`replication not ok: ${JSON.stringify(res)}`);
  }
  return { res, secs, cpu_secs: (cpu.user + cpu.system) / 1e6 };
}

async function push(PouchDB, dir, url, n) {
  const db = new PouchDB(dir, { adapter: 'leveldb' });
  await fill(db, n);
  const t = await timed(() => db.replicate.to(url));
  const remote = await new PouchDB(url).info();
  await db.close();
  return { op: 'push', docs: remote.doc_count, docs_written: t.res.docs_written, secs: t.secs, cpu_secs: t.cpu_secs };
}

async function pull(PouchDB, dir, url) {
  const db = new PouchDB(dir, { adapter: 'leveldb' });
  await db.info(); // open the store before the clock starts
  const t = await timed(() => db.replicate.from(url));
  const local = await db.info();
  await db.close();
  return { op: 'pull', docs: local.doc_count, docs_written: t.res.docs_written, secs: t.secs, cpu_secs: t.cpu_secs };
}

async function main(argv) {
  const [op, dir, url, n] = argv;
  const PouchDB = pouchdb();
  if (op === 'push' && argv.length === 4 && Number(n) > 0) return push(PouchDB, dir, url, Number(n));
  if (op === 'pull' && argv.length === 3) return pull(PouchDB, dir, url);
  throw new Error(USAGE);
}

main(process.argv.slice(2)).then(
  (out) => console.log(JSON.stringify(out)),
  (e) => {
    console.error(`pouch_replicate: ${e && e.stack ? e.stack : e}`);
    process.exit(1);
  },
);
