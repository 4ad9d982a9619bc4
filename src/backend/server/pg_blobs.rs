//! Attachment content in PostgreSQL: the [`BlobBackend`] of the
//! PostgreSQL store, so that every node of a cluster serves every upload.
//!
//! Why chunked `bytea` rows rather than large objects: rows are
//! replicated, dumped and access-controlled like the rest of the schema,
//! a chunk is one `INSERT` that commits on its own (so an upload resumes
//! from the last committed chunk on any node), and ranges are read with a
//! plain indexed query. An upload's chunks live in `syncd_blob_parts`
//! under its scope; the chunk that completes it hashes them in order (a
//! few rows at a time, never the whole content in memory) and, if they
//! match the name, copies them once into `syncd_blob_chunks` and grants
//! the content to the scope. Uploads of one content into one scope are
//! serialised by an advisory lock on the pair.

use std::collections::HashSet;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::domain::attachment::hex;

use super::blobs::{BlobBackend, Held, PutError};
use super::pg_store::PgStore;
use super::store::StoreError;

/// Largest content this server takes (as the file store).
const LIMIT: u64 = super::MAX_BLOB_BYTES;

/// Rows read per query while hashing or reading a range.
const ROWS: i64 = 8;

const HELD: &str = "SELECT b.length FROM syncd_blob_grants g JOIN syncd_blobs b USING (sha256) \
     WHERE g.scope = $1 AND g.sha256 = $2";
const PART_LEN: &str = "SELECT COALESCE(sum(length(data)), 0)::bigint FROM syncd_blob_parts \
     WHERE scope = $1 AND sha256 = $2";

impl PgStore {
    async fn held_async(&self, scope: &str, sha256: &str) -> Result<Held, StoreError> {
        let c = self.reader().await?;
        if let Some(row) = c
            .query_opt(HELD, &[&scope, &sha256])
            .await
            .map_err(|e| self.pg_error("read syncd_blobs", &e))?
        {
            let length: i64 = row.get(0);
            return Ok(Held::Complete {
                length: length as u64,
            });
        }
        let row = c
            .query_one(PART_LEN, &[&scope, &sha256])
            .await
            .map_err(|e| self.pg_error("read syncd_blob_parts", &e))?;
        Ok(Held::Partial(row.get::<_, i64>(0) as u64))
    }

    async fn put_async(
        &self,
        scope: &str,
        sha256: &str,
        offset: u64,
        length: u64,
        chunk: &[u8],
    ) -> Result<Held, PutError> {
        if length > LIMIT {
            return Err(PutError::TooLarge { limit: LIMIT });
        }
        let fail =
            |what: &str, e: tokio_postgres::Error| PutError::Storage(self.pg_error(what, &e));
        let mut c = self.client().await.map_err(PutError::Storage)?;
        let tx = c.transaction().await.map_err(|e| fail("begin", e))?;
        let key = format!("{scope}\n{sha256}");
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 7))",
            &[&key],
        )
        .await
        .map_err(|e| fail("lock the upload", e))?;
        if let Some(row) = tx
            .query_opt(HELD, &[&scope, &sha256])
            .await
            .map_err(|e| fail("read syncd_blobs", e))?
        {
            return Ok(Held::Complete {
                length: row.get::<_, i64>(0) as u64,
            });
        }
        let mut at = tx
            .query_one(PART_LEN, &[&scope, &sha256])
            .await
            .map_err(|e| fail("read syncd_blob_parts", e))?
            .get::<_, i64>(0) as u64;
        let drop_parts = "DELETE FROM syncd_blob_parts WHERE scope = $1 AND sha256 = $2";
        if at > length {
            // Not this content's (a client that announced another length):
            // dropped, the upload starts over.
            tx.execute(drop_parts, &[&scope, &sha256])
                .await
                .map_err(|e| fail("drop syncd_blob_parts", e))?;
            at = 0;
        }
        if at != offset {
            tx.commit().await.map_err(|e| fail("commit", e))?;
            return Err(PutError::Offset(at));
        }
        if offset + chunk.len() as u64 > length {
            return Err(PutError::TooLong { length });
        }
        tx.execute(
            "INSERT INTO syncd_blob_parts (scope, sha256, pos, data) VALUES ($1, $2, $3, $4)",
            &[&scope, &sha256, &(offset as i64), &chunk],
        )
        .await
        .map_err(|e| fail("write syncd_blob_parts", e))?;
        let now = offset + chunk.len() as u64;
        if now < length {
            tx.commit().await.map_err(|e| fail("commit", e))?;
            return Ok(Held::Partial(now));
        }
        let got = hash_parts(&tx, scope, sha256)
            .await
            .map_err(|e| fail("read syncd_blob_parts", e))?;
        if got != sha256 {
            tx.execute(drop_parts, &[&scope, &sha256])
                .await
                .map_err(|e| fail("drop syncd_blob_parts", e))?;
            tx.commit().await.map_err(|e| fail("commit", e))?;
            return Err(PutError::HashMismatch { got });
        }
        // Uploaded again (into another scope): its retention starts over.
        let fresh: bool = tx
            .query_one(
                "INSERT INTO syncd_blobs (sha256, length) VALUES ($1, $2) \
                 ON CONFLICT (sha256) DO UPDATE SET created_at = now() \
                 RETURNING (xmax = 0)",
                &[&sha256, &(length as i64)],
            )
            .await
            .map_err(|e| fail("write syncd_blobs", e))?
            .get(0);
        if fresh {
            tx.execute(
                "INSERT INTO syncd_blob_chunks (sha256, pos, data) SELECT sha256, pos, data \
                 FROM syncd_blob_parts WHERE scope = $1 AND sha256 = $2",
                &[&scope, &sha256],
            )
            .await
            .map_err(|e| fail("write syncd_blob_chunks", e))?;
        }
        tx.execute(
            "INSERT INTO syncd_blob_grants (scope, sha256) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&scope, &sha256],
        )
        .await
        .map_err(|e| fail("write syncd_blob_grants", e))?;
        tx.execute(drop_parts, &[&scope, &sha256])
            .await
            .map_err(|e| fail("drop syncd_blob_parts", e))?;
        tx.commit().await.map_err(|e| fail("commit", e))?;
        Ok(Held::Complete { length })
    }

    async fn read_async(
        &self,
        scope: &str,
        sha256: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let Held::Complete { length } = self.held_async(scope, sha256).await? else {
            return Ok(None);
        };
        let end = end.map_or(length, |e| e.min(length));
        let c = self.reader().await?;
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        let mut from = start as i64;
        while (from as u64) < end {
            let rows = c
                .query(
                    "SELECT pos, data FROM syncd_blob_chunks WHERE sha256 = $1 \
                     AND pos + length(data) > $2 AND pos < $3 ORDER BY pos LIMIT $4",
                    &[&sha256, &from, &(end as i64), &ROWS],
                )
                .await
                .map_err(|e| self.pg_error("read syncd_blob_chunks", &e))?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let pos = row.get::<_, i64>(0) as u64;
                let data: &[u8] = row.get(1);
                let a = (from as u64).saturating_sub(pos) as usize;
                let b = (end.saturating_sub(pos) as usize).min(data.len());
                if a < b {
                    out.extend_from_slice(&data[a..b]);
                }
                from = (pos + data.len() as u64) as i64;
            }
        }
        Ok(Some((out, length)))
    }

    async fn collect_async(
        &self,
        referenced: &HashSet<String>,
        retention: Duration,
    ) -> Result<u64, StoreError> {
        let secs = retention.as_secs_f64();
        let c = self.client().await?;
        let fail = |what: &str, e: tokio_postgres::Error| self.pg_error(what, &e);
        // Whole uploads only: one whose last chunk is that old.
        let mut removed = c
            .execute(
                "DELETE FROM syncd_blob_parts WHERE (scope, sha256) IN (SELECT scope, sha256 \
                 FROM syncd_blob_parts GROUP BY scope, sha256 \
                 HAVING max(updated_at) < now() - make_interval(secs => $1))",
                &[&secs],
            )
            .await
            .map_err(|e| fail("collect syncd_blob_parts", e))?;
        let old = c
            .query(
                "SELECT sha256 FROM syncd_blobs WHERE created_at < now() - make_interval(secs => $1)",
                &[&secs],
            )
            .await
            .map_err(|e| fail("read syncd_blobs", e))?;
        for row in old {
            let sha: String = row.get(0);
            if referenced.contains(&sha) {
                continue;
            }
            for t in ["syncd_blob_chunks", "syncd_blob_grants", "syncd_blobs"] {
                c.execute(&format!("DELETE FROM {t} WHERE sha256 = $1"), &[&sha])
                    .await
                    .map_err(|e| fail("collect content", e))?;
            }
            removed += 1;
        }
        Ok(removed)
    }
}

/// The SHA-256 of an upload's chunks, read a few rows at a time.
async fn hash_parts(
    tx: &tokio_postgres::Transaction<'_>,
    scope: &str,
    sha256: &str,
) -> Result<String, tokio_postgres::Error> {
    let mut h = Sha256::new();
    let mut from: i64 = -1;
    loop {
        let rows = tx
            .query(
                "SELECT pos, data FROM syncd_blob_parts WHERE scope = $1 AND sha256 = $2 \
                 AND pos > $3 ORDER BY pos LIMIT $4",
                &[&scope, &sha256, &from, &ROWS],
            )
            .await?;
        if rows.is_empty() {
            return Ok(hex(&h.finalize()));
        }
        for row in rows {
            from = row.get(0);
            h.update(row.get::<_, &[u8]>(1));
        }
    }
}

impl BlobBackend for PgStore {
    fn held(&self, scope: &str, sha256: &str) -> Result<Held, StoreError> {
        self.block(self.held_async(scope, sha256))
    }

    fn put(
        &self,
        scope: &str,
        sha256: &str,
        offset: u64,
        length: u64,
        chunk: &[u8],
    ) -> Result<Held, PutError> {
        self.block(self.put_async(scope, sha256, offset, length, chunk))
    }

    fn read(
        &self,
        scope: &str,
        sha256: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        self.block(self.read_async(scope, sha256, start, end))
    }

    fn collect(
        &self,
        referenced: &HashSet<String>,
        retention: Duration,
    ) -> Result<u64, StoreError> {
        self.block(self.collect_async(referenced, retention))
    }
}
