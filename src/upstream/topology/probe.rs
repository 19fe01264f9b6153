//! Asking one instance what it knows: which instance it is, whether it is the writer (not
//! in recovery), and the cluster's topology from `aurora_replica_status()` (the writer is
//! the row whose `session_id` is `MASTER_SESSION_ID`; rows not updated for 5 minutes are
//! left out, as the AWS JDBC Wrapper does). One simple query on a logged-in connection.

use bytes::{Buf, BytesMut};
use pgwire::messages::simplequery::Query;

use crate::upstream::exchange;
use crate::upstream::login::ServerConn;
use crate::wire::{self, FrameError};

/// The query: one row, three columns.
pub const TOPOLOGY_QUERY: &str = "SELECT pg_catalog.aurora_db_instance_identifier(), \
     pg_catalog.pg_is_in_recovery()::text, \
     (SELECT pg_catalog.string_agg(server_id || CASE WHEN session_id = 'MASTER_SESSION_ID' \
     THEN ':w' ELSE ':r' END, ',' ORDER BY server_id) \
     FROM pg_catalog.aurora_replica_status() \
     WHERE session_id = 'MASTER_SESSION_ID' OR last_update_timestamp IS NULL \
     OR pg_catalog.now() - last_update_timestamp <= interval '300 seconds')";

/// SQLSTATE undefined_function: not Aurora.
const UNDEFINED_FUNCTION: &str = "42883";

/// One instance of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The instance identifier (`server_id`).
    pub id: String,
    /// Whether the topology names it the writer.
    pub writer: bool,
}

/// What an instance said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Its identifier.
    pub instance: String,
    /// It is the writer (not in recovery).
    pub writer: bool,
    /// The topology as it sees it.
    pub members: Vec<Member>,
}

/// Why an instance gave no report.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The server has no Aurora functions: plain PostgreSQL or RDS.
    #[error("not Aurora (no aurora_replica_status())")]
    NotAurora,
    /// The server answered the query with an error.
    #[error("topology query failed: {0}")]
    Server(String),
    /// The answer was not one row of three columns.
    #[error("unexpected answer to the topology query")]
    Shape,
    /// The exchange broke.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// Connecting or logging in failed.
    #[error("{0}")]
    Login(String),
    /// No answer in time.
    #[error("timeout")]
    Timeout,
}

/// Runs the topology query on `conn`.
pub async fn ask(conn: &mut ServerConn) -> Result<Report, ProbeError> {
    let mut buf = BytesMut::new();
    wire::encode(&Query::new(TOPOLOGY_QUERY.to_owned()), "Query", &mut buf)
        .map_err(|e| ProbeError::Server(e.to_string()))?;
    wire::send(&mut conn.stream, &buf)
        .await
        .map_err(FrameError::Io)?;
    let (mut row, mut failed) = (None, None);
    loop {
        let frame = exchange::next(&mut conn.stream).await?;
        match frame[0] {
            b'D' if row.is_none() => row = Some(columns(&frame).ok_or(ProbeError::Shape)?),
            b'E' => failed = Some(exchange::server_error(frame)?),
            b'Z' => break,
            _ => {}
        }
    }
    if let Some(e) = failed {
        return Err(match e.code.as_str() {
            UNDEFINED_FUNCTION => ProbeError::NotAurora,
            _ => ProbeError::Server(format!("{} {}", e.code, e.message)),
        });
    }
    match row.as_deref() {
        Some([Some(id), Some(recovery), members]) => Ok(Report {
            instance: id.clone(),
            writer: recovery == "false",
            members: parse_members(members.as_deref().unwrap_or_default()),
        }),
        _ => Err(ProbeError::Shape),
    }
}

/// `id:w,id:r,...` as members.
fn parse_members(text: &str) -> Vec<Member> {
    text.split(',')
        .filter_map(|m| m.rsplit_once(':'))
        .filter(|(id, _)| !id.is_empty())
        .map(|(id, role)| Member {
            id: id.to_owned(),
            writer: role == "w",
        })
        .collect()
}

/// The columns of a DataRow frame as text (`None` for NULL).
fn columns(frame: &[u8]) -> Option<Vec<Option<String>>> {
    let mut body = frame.get(5..)?;
    if body.remaining() < 2 {
        return None;
    }
    let count = body.get_i16();
    let mut out = Vec::with_capacity(usize::try_from(count).ok()?);
    for _ in 0..count {
        if body.remaining() < 4 {
            return None;
        }
        let len = body.get_i32();
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).ok()?;
        let bytes = body.get(..len)?;
        out.push(Some(String::from_utf8_lossy(bytes).into_owned()));
        body.advance(len);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_and_members_parse() {
        let mut frame = vec![b'D', 0, 0, 0, 0, 0, 2];
        frame.extend_from_slice(&3i32.to_be_bytes());
        frame.extend_from_slice(b"abc");
        frame.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(columns(&frame), Some(vec![Some("abc".to_owned()), None]));
        assert_eq!(columns(&frame[..9]), None, "truncated");
        let members = parse_members("inst-1:w,inst-2:r,:r");
        assert_eq!(members.len(), 2);
        assert!(members[0].writer && !members[1].writer);
    }
}
