//! Where a log's bytes are in the object store: one row per acknowledged
//! append, end to end, so any replica can rebuild the stream.

use kiln_protocol::LogStream;

use super::values::{now_ms, to_json};
use crate::db::sql::{params, Connection};
use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
pub struct LogChunk {
    pub start: u64,
    pub length: u64,
    pub object_key: String,
    /// The agent's time marks inside this chunk: (offset, unix millis).
    pub marks: Vec<(u64, i64)>,
}

/// Chunks holding bytes at or past `from`, in order.
pub fn log_chunks_from(
    conn: &mut Connection,
    job_id: &str,
    stream: LogStream,
    from: u64,
) -> Result<Vec<LogChunk>, ApiError> {
    let chunks = conn
        .prepare(
            "SELECT start_at, length, object_key, marks FROM log_chunks
             WHERE job_id = ?1 AND stream = ?2 AND start_at + length > ?3 ORDER BY start_at",
        )?
        .query_map(params![job_id, stream.as_str(), from as i64], |row| {
            Ok(LogChunk {
                start: row.get(0)?,
                length: row.get(1)?,
                object_key: row.get(2)?,
                marks: serde_json::from_str(&row.get::<_, String>(3)?).unwrap_or_default(),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(chunks)
}

/// Records `chunk` if it starts where the stream ends; otherwise (another
/// replica appended first) returns the stream's end.
pub fn add_log_chunk(
    conn: &mut Connection,
    job_id: &str,
    stream: LogStream,
    chunk: &LogChunk,
) -> Result<Result<(), u64>, ApiError> {
    // Appends to different streams run side by side; the primary key refuses a
    // second chunk at one offset.
    let tx = conn.transaction_shared()?;
    let end: u64 = tx.query_row(
        "SELECT COALESCE(MAX(start_at + length), 0) FROM log_chunks WHERE job_id = ?1 AND stream = ?2",
        params![job_id, stream.as_str()],
        |row| row.get(0),
    )?;
    if end != chunk.start {
        return Ok(Err(end));
    }
    let added = tx.execute(
        "INSERT INTO log_chunks (job_id, stream, start_at, length, object_key, marks, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (job_id, stream, start_at) DO NOTHING",
        params![
            job_id,
            stream.as_str(),
            chunk.start as i64,
            chunk.length as i64,
            chunk.object_key,
            to_json(&chunk.marks),
            now_ms()
        ],
    )?;
    tx.commit()?;
    Ok(if added == 1 { Ok(()) } else { Err(end) })
}

/// Puts `merged` (the stream from 0, in one object) in the place of the chunks
/// it was made of, `replaced` (their object keys, in order). Refuses (`false`)
/// when the chunks before `merged`'s end are no longer those: another replica
/// compacted them first.
pub fn replace_log_chunks(
    conn: &mut Connection,
    job_id: &str,
    stream: LogStream,
    replaced: &[String],
    merged: &LogChunk,
) -> Result<bool, ApiError> {
    let tx = conn.transaction_shared()?;
    let held: Vec<String> = tx
        .prepare(&format!(
            "SELECT object_key FROM log_chunks
             WHERE job_id = ?1 AND stream = ?2 AND start_at < ?3 ORDER BY start_at{}",
            tx.for_update()
        ))?
        .query_map(
            params![job_id, stream.as_str(), merged.length as i64],
            |row| row.get(0),
        )?
        .collect::<Result<_, _>>()?;
    if merged.start != 0 || held != replaced {
        return Ok(false);
    }
    tx.execute(
        "DELETE FROM log_chunks WHERE job_id = ?1 AND stream = ?2 AND start_at < ?3",
        params![job_id, stream.as_str(), merged.length as i64],
    )?;
    tx.execute(
        "INSERT INTO log_chunks (job_id, stream, start_at, length, object_key, marks, created_at)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6)",
        params![
            job_id,
            stream.as_str(),
            merged.length as i64,
            merged.object_key,
            to_json(&merged.marks),
            now_ms()
        ],
    )?;
    tx.commit()?;
    Ok(true)
}

/// Jobs that ended before `ended_before` (unix millis) and whose logs have not
/// been compacted, oldest first.
pub fn jobs_with_logs_to_compact(
    conn: &mut Connection,
    ended_before: i64,
    limit: i64,
) -> Result<Vec<String>, ApiError> {
    let ids = conn
        .prepare(
            "SELECT id FROM jobs WHERE logs_compacted_at IS NULL AND finished_at < ?1
             ORDER BY finished_at LIMIT ?2",
        )?
        .query_map(params![ended_before, limit], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

pub fn mark_logs_compacted(conn: &mut Connection, job_id: &str) -> Result<(), ApiError> {
    conn.execute(
        "UPDATE jobs SET logs_compacted_at = ?2 WHERE id = ?1",
        params![job_id, now_ms()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(start: u64, length: u64) -> LogChunk {
        LogChunk {
            start,
            length,
            object_key: format!("k{start}"),
            marks: vec![(start, 1000)],
        }
    }

    #[test]
    fn chunks_join_end_to_end_or_are_refused_with_the_end() {
        let mut conn = crate::db::in_memory();
        let s = LogStream::Backend;
        assert_eq!(
            add_log_chunk(&mut conn, "j", s, &chunk(0, 5)).unwrap(),
            Ok(())
        );
        assert_eq!(
            add_log_chunk(&mut conn, "j", s, &chunk(0, 7)).unwrap(),
            Err(5)
        );
        assert_eq!(
            add_log_chunk(&mut conn, "j", s, &chunk(9, 1)).unwrap(),
            Err(5)
        );
        assert_eq!(
            add_log_chunk(&mut conn, "j", s, &chunk(5, 3)).unwrap(),
            Ok(())
        );
        let all = log_chunks_from(&mut conn, "j", s, 0).unwrap();
        assert_eq!(all, vec![chunk(0, 5), chunk(5, 3)]);
        assert_eq!(
            log_chunks_from(&mut conn, "j", s, 6).unwrap(),
            vec![chunk(5, 3)]
        );
        assert!(log_chunks_from(&mut conn, "j", LogStream::System, 0)
            .unwrap()
            .is_empty());
    }
}
