//! The pooled mode: the idle verdict for each rule, with both streams split at every point,
//! and the splice over in-memory streams (Terminate kept from the server, which stays open).

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::frames::Frames;
use super::pin::SCAN_LIMIT;
use super::track::{idle, ClientWatch, ServerWatch, Side};
use super::{splice_transaction, splice_with, Ended, Meters, Mode, Outcome, PinReason};

/// A message with `tag` and `body`.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn query() -> Vec<u8> {
    msg(b'Q', b"select 1\0")
}

fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}

/// A result: RowDescription, DataRow, CommandComplete.
fn rows() -> Vec<u8> {
    cat(&[
        msg(
            b'T',
            &[
                0, 1, b'x', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 0,
            ],
        ),
        msg(b'D', &[0, 1, 0, 0, 0, 1, b'1']),
        msg(b'C', b"SELECT 1\0"),
    ])
}

/// The verdict on a session whose client sent `client` and whose server sent `server`, each
/// read in two chunks split at every point (the verdict must not depend on the split), with
/// how many client bytes would be forwarded.
fn verdict(client: &[u8], server: &[u8]) -> (bool, usize) {
    let mut seen = None;
    for cs in 0..=client.len() {
        for ss in 0..=server.len() {
            let (mut cf, mut cw) = (Frames::default(), ClientWatch::default());
            let mut kept = cf.follow(&client[..cs], &mut cw);
            if kept == cs {
                kept += cf.follow(&client[cs..], &mut cw); // a stop ends the reading
            }
            let (mut sf, mut sw) = (Frames::default(), ServerWatch::default());
            assert_eq!(sf.follow(&server[..ss], &mut sw), ss);
            assert_eq!(sf.follow(&server[ss..], &mut sw), server.len() - ss);
            let c = Side {
                watch: &cw,
                frames: &cf,
            };
            let s = Side {
                watch: &sw,
                frames: &sf,
            };
            let v = (idle(c, s), kept);
            assert_eq!(
                *seen.get_or_insert(v),
                v,
                "split at client {cs}, server {ss}"
            );
        }
    }
    seen.expect("at least one split")
}

#[test]
fn answered_requests_leave_the_server_idle() {
    let all = |c: &[u8], _: &[u8]| (true, c.len());
    let (c, s) = (query(), cat(&[rows(), ready(b'I')]));
    assert_eq!(verdict(&c, &s), all(&c, &s), "simple query");
    let c = cat(&[
        msg(b'P', b"\0select 1\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'D', b"P\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]);
    let s = cat(&[msg(b'1', b""), msg(b'2', b""), rows(), ready(b'I')]);
    assert_eq!(verdict(&c, &s), all(&c, &s), "extended protocol");
    let (c, s) = (msg(b'F', &[0; 12]), cat(&[msg(b'V', &[0; 4]), ready(b'I')]));
    assert_eq!(verdict(&c, &s), all(&c, &s), "function call");
    assert_eq!(verdict(b"", b""), (true, 0), "nothing since the greeting");
    let c = cat(&[query(), msg(b'H', b"")]);
    let s = cat(&[rows(), ready(b'I')]);
    assert_eq!(verdict(&c, &s), all(&c, &s), "a Flush after it");
}

#[test]
fn a_transaction_left_open_or_failed_is_not_idle() {
    let s = cat(&[msg(b'C', b"BEGIN\0"), ready(b'T')]);
    assert!(!verdict(&query(), &s).0, "in a transaction block");
    let s = cat(&[msg(b'E', b"SERROR\0\0"), ready(b'E')]);
    assert!(!verdict(&query(), &s).0, "in a failed transaction block");
}

#[test]
fn unanswered_or_unsynced_requests_are_not_idle() {
    let c = cat(&[query(), query()]);
    let s = cat(&[rows(), ready(b'I')]);
    assert!(!verdict(&c, &s).0, "pipelined");
    let c = cat(&[
        query(),
        msg(b'P', b"\0select 1\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'H', b""),
    ]);
    let s = cat(&[rows(), ready(b'I'), msg(b'1', b""), msg(b'2', b"")]);
    assert!(!verdict(&c, &s).0, "Parse/Bind without Sync");
}

#[test]
fn copy_counts_only_when_done() {
    let copy = msg(b'Q', b"copy t from stdin\0");
    let start = msg(b'G', &[0, 0, 1, 0, 0]);
    let c = cat(&[copy.clone(), msg(b'd', b"1\n"), msg(b'd', b"2\n")]);
    assert!(!verdict(&c, &start).0, "COPY in progress");
    let c = cat(&[copy, msg(b'd', b"1\n"), msg(b'c', b"")]);
    let s = cat(&[start, msg(b'C', b"COPY 1\0"), ready(b'I')]);
    assert_eq!(verdict(&c, &s), (true, c.len()), "COPY done");
}

#[test]
fn a_side_in_the_middle_of_a_message_is_not_idle() {
    let s = cat(&[rows(), ready(b'I')]);
    let c = cat(&[query(), query()[..7].to_vec()]);
    assert!(!verdict(&c, &s).0, "client EOF mid-message");
    let s = cat(&[rows(), ready(b'I'), msg(b'N', b"SNOTICE\0\0")[..6].to_vec()]);
    assert!(!verdict(&query(), &s).0, "server mid-message");
    assert!(
        !verdict(&query(), &ready(b'I')[..5]).0,
        "status byte not yet"
    );
}

#[test]
fn terminate_is_not_followed_and_everything_before_it_is() {
    let s = cat(&[rows(), ready(b'I')]);
    let c = cat(&[query(), msg(b'X', b""), query()]);
    assert_eq!(
        verdict(&c, &s),
        (true, query().len()),
        "after an answered query"
    );
    assert_eq!(
        verdict(&c, b""),
        (false, query().len()),
        "before the answer"
    );
    assert_eq!(
        verdict(&msg(b'X', b""), b""),
        (true, 0),
        "right after the greeting"
    );
}

struct Ends {
    client: DuplexStream,
    server: DuplexStream,
    relay: JoinHandle<(Outcome, DuplexStream)>,
}

fn start(mode: Mode) -> Ends {
    let (client, mut proxy_client) = tokio::io::duplex(64 * 1024);
    let (mut proxy_upstream, server) = tokio::io::duplex(64 * 1024);
    let relay = tokio::spawn(async move {
        let cut = super::Cut::new(CancellationToken::new());
        let meters = Meters::NONE;
        let o = splice_with(
            &mut proxy_client,
            &mut proxy_upstream,
            &cut,
            None,
            meters,
            mode,
        );
        (o.await, proxy_upstream)
    });
    Ends {
        client,
        server,
        relay,
    }
}

async fn read_n(s: &mut DuplexStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).await.expect("read");
    buf
}

/// The relay ended; the server connection is still open: what the server reads next is
/// what the proxy writes after the session.
async fn still_open(server: &mut DuplexStream, mut upstream: DuplexStream) {
    upstream.write_all(b"next").await.expect("write");
    assert_eq!(read_n(server, 4).await, b"next", "no Terminate, no close");
}

#[tokio::test]
async fn pooled_terminate_ends_the_session_and_leaves_the_server_idle_and_open() {
    let mut e = start(Mode::Pooled);
    e.client.write_all(&query()).await.expect("write");
    assert_eq!(read_n(&mut e.server, query().len()).await, query());
    let answer = cat(&[rows(), ready(b'I')]);
    e.server.write_all(&answer).await.expect("write");
    assert_eq!(read_n(&mut e.client, answer.len()).await, answer);
    e.client.write_all(&msg(b'X', b"")).await.expect("write");
    let (outcome, upstream) = e.relay.await.expect("join");
    assert_eq!(outcome.ended, Ended::Released { terminate: true });
    assert!(outcome.server_idle);
    assert_eq!(outcome.to_server, query().len() as u64);
    let mut rest = Vec::new();
    e.client
        .read_to_end(&mut rest)
        .await
        .expect("client closed");
    assert_eq!(rest, b"");
    still_open(&mut e.server, upstream).await;
}

#[tokio::test]
async fn pooled_bytes_before_terminate_pass_and_an_unanswered_sync_is_not_idle() {
    let mut e = start(Mode::Pooled);
    let batch = cat(&[msg(b'P', b"\0select 1\0\0\0"), msg(b'S', b"")]);
    e.client
        .write_all(&cat(&[batch.clone(), msg(b'X', b"")]))
        .await
        .expect("write");
    let (outcome, upstream) = e.relay.await.expect("join");
    assert_eq!(outcome.ended, Ended::Released { terminate: true });
    assert!(!outcome.server_idle, "the Sync's ReadyForQuery is owed");
    assert_eq!(read_n(&mut e.server, batch.len()).await, batch);
    still_open(&mut e.server, upstream).await;
}

#[tokio::test]
async fn pooled_client_closing_inside_a_transaction_is_not_idle() {
    let mut e = start(Mode::Pooled);
    e.client.write_all(&query()).await.expect("write");
    assert_eq!(read_n(&mut e.server, query().len()).await, query());
    let answer = cat(&[msg(b'C', b"BEGIN\0"), ready(b'T')]);
    e.server.write_all(&answer).await.expect("write");
    assert_eq!(read_n(&mut e.client, answer.len()).await, answer);
    e.client.shutdown().await.expect("close");
    let (outcome, _) = e.relay.await.expect("join");
    assert_eq!(outcome.ended, Ended::Released { terminate: false });
    assert!(!outcome.server_idle);
}

#[tokio::test]
async fn pooled_server_closing_is_not_idle() {
    let mut e = start(Mode::Pooled);
    e.server.shutdown().await.expect("close");
    let mut rest = Vec::new();
    e.client
        .read_to_end(&mut rest)
        .await
        .expect("client sees the end");
    e.client.shutdown().await.expect("close");
    let (outcome, _) = e.relay.await.expect("join");
    assert_eq!(
        outcome.ended,
        Ended::Closed {
            client_first: false
        }
    );
    assert!(!outcome.server_idle);
}

#[tokio::test]
async fn plain_mode_forwards_terminate_as_before() {
    let mut e = start(Mode::Plain);
    e.client.write_all(&msg(b'X', b"")).await.expect("write");
    assert_eq!(read_n(&mut e.server, 5).await, msg(b'X', b""));
    e.server.shutdown().await.expect("close");
    e.client.shutdown().await.expect("close");
    let (outcome, _) = e.relay.await.expect("join");
    assert!(matches!(outcome.ended, Ended::Closed { .. }));
    assert!(!outcome.server_idle);
}

/// Transaction mode over in-memory streams: the relay and the client's end.
fn start_transaction(early: Vec<u8>) -> (DuplexStream, DuplexStream, JoinHandle<Outcome>) {
    let (client, mut proxy_client) = tokio::io::duplex(64 * 1024);
    let (mut proxy_upstream, server) = tokio::io::duplex(64 * 1024);
    let relay = tokio::spawn(async move {
        let cut = super::Cut::new(CancellationToken::new());
        let prepared = Default::default();
        let o = splice_transaction(
            &mut proxy_client,
            &mut proxy_upstream,
            super::Phase::Transaction { early },
            &cut,
            None,
            Meters::NONE,
            &prepared,
        );
        o.await
    });
    (client, server, relay)
}

#[tokio::test]
async fn a_transaction_returns_before_its_final_ready_for_query_is_written() {
    let (mut client, mut server, relay) = start_transaction(query());
    assert_eq!(read_n(&mut server, query().len()).await, query());
    let answer = cat(&[rows(), ready(b'I')]);
    server.write_all(&answer).await.expect("write");
    let outcome = relay.await.expect("join");
    assert_eq!(outcome.ended, Ended::Returned);
    assert_eq!(outcome.pinned, None);
    assert!(outcome.tail.ends_with(&ready(b'I')), "{:?}", outcome.tail);
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .await
        .expect("the relay's end closed");
    assert_eq!(
        got, b"",
        "the client got bytes before the connection went back"
    );
    assert_eq!(
        outcome.tail, answer,
        "the whole answer, read at once, was held"
    );
}

#[tokio::test]
async fn a_pipelined_second_request_keeps_the_connection_until_its_answer() {
    let two = cat(&[query(), query()]);
    let (mut client, mut server, relay) = start_transaction(two.clone());
    assert_eq!(read_n(&mut server, two.len()).await, two);
    let first = cat(&[rows(), ready(b'I')]);
    server.write_all(&first).await.expect("write");
    assert_eq!(
        read_n(&mut client, first.len()).await,
        first,
        "the first answer is not held: the second is owed"
    );
    assert!(!relay.is_finished());
    server.write_all(&first).await.expect("write");
    let outcome = relay.await.expect("join");
    assert_eq!(outcome.ended, Ended::Returned);
    assert_eq!(outcome.tail, first);
}

#[tokio::test]
async fn a_transaction_block_is_not_returned_at_its_begin() {
    let (mut client, mut server, relay) = start_transaction(query());
    assert_eq!(read_n(&mut server, query().len()).await, query());
    let begin = cat(&[msg(b'C', b"BEGIN\0"), ready(b'T')]);
    server.write_all(&begin).await.expect("write");
    assert_eq!(read_n(&mut client, begin.len()).await, begin);
    client.write_all(&query()).await.expect("write");
    assert_eq!(read_n(&mut server, query().len()).await, query());
    let commit = cat(&[msg(b'C', b"COMMIT\0"), ready(b'I')]);
    server.write_all(&commit).await.expect("write");
    let outcome = relay.await.expect("join");
    assert_eq!(outcome.ended, Ended::Returned);
    assert_eq!(outcome.tail, commit);
}

/// The pin reason a transaction of `early`, then `more` from the client, ends with (the
/// server answers each of the client's Syncs and Queries with ReadyForQuery('I')).
async fn pinned_by(early: Vec<u8>, more: Vec<u8>, requests: usize) -> Option<PinReason> {
    let all = cat(&[early.clone(), more.clone()]);
    let (mut client, mut server, relay) = start_transaction(early);
    client.write_all(&more).await.expect("write");
    assert_eq!(read_n(&mut server, all.len()).await, all);
    let answers: Vec<_> = (0..requests).map(|_| ready(b'I')).collect();
    server.write_all(&cat(&answers)).await.expect("write");
    let outcome = relay.await.expect("join");
    assert_eq!(outcome.ended, Ended::Returned);
    outcome.pinned
}

#[tokio::test]
async fn each_text_is_judged_once_short_long_parse_or_split() {
    let q = |sql: &str| msg(b'Q', format!("{sql}\0").as_bytes());
    assert_eq!(
        pinned_by(q("SET x = 1"), vec![], 1).await,
        Some(PinReason::Set)
    );
    assert_eq!(pinned_by(q("SELECT 1"), vec![], 1).await, None);
    // Over the rewrite's limit: the scan judges its first part.
    let long = format!("LISTEN x; SELECT '{}'", "y".repeat(SCAN_LIMIT + 10));
    assert_eq!(
        pinned_by(q(&long), vec![], 1).await,
        Some(PinReason::Listen)
    );
    let long = format!("SELECT '{}'", "y".repeat(SCAN_LIMIT + 10));
    assert_eq!(pinned_by(q(&long), vec![], 1).await, None);
    // An unnamed Parse's text, then Sync.
    let parse = msg(b'P', b"\0CREATE TEMP TABLE t (a int)\0\0\0");
    let sync = msg(b'S', b"");
    let got = pinned_by(cat(&[parse, sync]), vec![], 1).await;
    assert_eq!(got, Some(PinReason::TempTable));
    // A Query split between the early bytes and the next read.
    let set = q("SET search_path = a");
    let (head, tail) = set.split_at(7);
    let got = pinned_by(head.to_vec(), tail.to_vec(), 1).await;
    assert_eq!(got, Some(PinReason::Set));
}
