//! Named statements rewritten ([`super::prepared`], [`super::rewrite`]): at every split of
//! the streams, across an error, and over the server connection's limit.

use super::prepared::{lock, put, Shared, SERVER_LIMIT};
use super::rewrite::Rewrite;

fn msg(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, tag, parts);
    out
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    msg(b'P', &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0\0\0"])
}

fn bind(name: &str) -> Vec<u8> {
    msg(b'B', &[b"\0", name.as_bytes(), b"\0\0\0\0\0\0\0"])
}

/// Feeds `input` split at `at` through a fresh client rewriter of `shared`.
fn client(shared: &Shared, input: &[u8], at: usize) -> Vec<u8> {
    let mut r = Rewrite::new(shared.clone(), true);
    let mut out = Vec::new();
    r.feed(&input[..at], &mut out);
    r.feed(&input[at..], &mut out);
    out
}

/// The server's side, as the relay feeds it: a read that goes on unchanged is skimmed.
fn server(shared: &Shared, input: &[u8], at: usize) -> Vec<u8> {
    let mut r = Rewrite::new(shared.clone(), false);
    let mut out = Vec::new();
    for read in [&input[..at], &input[at..]] {
        if !r.skim(read) {
            r.feed(read, &mut out);
        } else {
            out.extend_from_slice(read);
        }
    }
    out
}

#[test]
fn a_server_answer_that_goes_on_unchanged_is_skimmed_and_followed_at_every_split() {
    let answer = [
        msg(b'T', &[b"\0\x01a\0"]),
        msg(b'D', &[b"\0\x01\0\0\0\x01x"]),
        msg(b'C', &[b"SELECT 1\0"]),
        msg(b'Z', &[b"I"]),
    ]
    .concat();
    // Whole messages of passed kinds: nothing to rewrite.
    let mut r = Rewrite::new(Shared::default(), false);
    assert!(r.skim(&answer));
    assert!(r.skim(&answer[..7]), "a body split off goes on unchanged");
    assert!(
        !r.skim(&answer[7..12]),
        "a header split across reads is fed"
    );
    // A reply the proxy swallows after an answer, at every split of the two: the state the
    // skim leaves (within a body, between messages, each ReadyForQuery noted) is feed's.
    for at in 0..=answer.len() {
        let shared = Shared::default();
        client(
            &shared,
            &[parse("a", "SELECT 1"), msg(b'S', &[])].concat(),
            0,
        );
        let mut replies = answer.clone();
        replies.extend([msg(b'1', &[]), msg(b'Z', &[b"I"])].concat());
        let seen = server(&shared, &replies, at);
        assert_eq!(seen, replies, "split at {at}");
        // The Parse went unanswered up to the first ReadyForQuery, which (noted by the skim
        // too) undid it: the name is unknown, so a Bind of it goes on unchanged.
        let sent = client(&shared, &[bind("a"), msg(b'S', &[])].concat(), 0);
        assert_eq!(sent, [bind("a"), msg(b'S', &[])].concat(), "split at {at}");
    }
}

#[test]
fn names_are_rewritten_at_every_split() {
    let mut input = parse("st", "SELECT 1");
    input.extend(bind("st"));
    input.extend(msg(b'D', &[b"Sst\0"]));
    input.extend(msg(b'E', &[b"\0\0\0\0\0"]));
    input.extend(msg(b'S', &[]));
    let mut want = parse("pgiam_1", "SELECT 1");
    want.extend(bind("pgiam_1"));
    want.extend(msg(b'D', &[b"Spgiam_1\0"]));
    want.extend(msg(b'E', &[b"\0\0\0\0\0"]));
    want.extend(msg(b'S', &[]));
    for at in 0..=input.len() {
        let shared = Shared::default();
        assert_eq!(client(&shared, &input, at), want, "split at {at}");
    }
}

#[test]
fn a_known_text_is_answered_by_a_close_that_becomes_parse_complete() {
    let shared = Shared::default();
    let first = [parse("a", "SELECT 1"), msg(b'S', &[])].concat();
    client(&shared, &first, 0);
    let replies = [msg(b'1', &[]), msg(b'Z', &[b"I"])].concat();
    assert_eq!(server(&shared, &replies, 3), replies);
    // The same text under another name: the server has it.
    let second = [parse("b", "SELECT 1"), bind("b"), msg(b'S', &[])].concat();
    let sent = client(&shared, &second, 7);
    let want = [msg(b'C', &[b"Spgiam_\0"]), bind("pgiam_1"), msg(b'S', &[])].concat();
    assert_eq!(sent, want);
    let answers = [msg(b'3', &[]), msg(b'2', &[]), msg(b'Z', &[b"I"])].concat();
    let shown = [msg(b'1', &[]), msg(b'2', &[]), msg(b'Z', &[b"I"])].concat();
    assert_eq!(server(&shared, &answers, 2), shown);
}

#[test]
fn a_failed_parse_is_forgotten_and_an_injected_one_swallowed() {
    let shared = Shared::default();
    let sent = client(&shared, &[parse("a", "SELEC"), msg(b'S', &[])].concat(), 0);
    assert!(sent.starts_with(&parse("pgiam_1", "SELEC")));
    let error = [msg(b'E', &[b"C42601\0\0"]), msg(b'Z', &[b"I"])].concat();
    assert_eq!(server(&shared, &error, 0), error);
    // Unknown now: passed on unchanged (the server answers 26000).
    let sent = client(&shared, &[bind("a"), msg(b'S', &[])].concat(), 0);
    assert_eq!(sent, [bind("a"), msg(b'S', &[])].concat());
    server(
        &shared,
        &[msg(b'E', &[b"\0"]), msg(b'Z', &[b"I"])].concat(),
        0,
    );
    // A statement the connection lacks is prepared in front of its Bind, the reply dropped.
    client(
        &shared,
        &[parse("b", "SELECT 2"), msg(b'S', &[])].concat(),
        0,
    );
    server(&shared, &[msg(b'1', &[]), msg(b'Z', &[b"I"])].concat(), 0);
    let old = std::mem::take(&mut lock(&shared).server);
    lock(&shared).lend(old.cleared());
    let sent = client(&shared, &[bind("b"), msg(b'S', &[])].concat(), 0);
    let want = [
        parse("pgiam_3", "SELECT 2"),
        bind("pgiam_3"),
        msg(b'S', &[]),
    ];
    assert_eq!(sent, want.concat());
    let replies = [msg(b'1', &[]), msg(b'2', &[]), msg(b'Z', &[b"I"])].concat();
    assert_eq!(server(&shared, &replies, 1), replies[5..]);
    assert_eq!(lock(&shared).reprepared, 1);
}

#[test]
fn the_least_recently_used_statement_of_an_earlier_transaction_is_evicted() {
    let shared = Shared::default();
    for n in 0..=SERVER_LIMIT {
        let sql = format!("SELECT {n}");
        client(&shared, &parse(&format!("s{n}"), &sql), 0);
    }
    let sent = client(&shared, &parse("late", "SELECT 'late'"), 0);
    assert_eq!(sent[0], b'P', "nothing used in this transaction is evicted");
    let old = std::mem::take(&mut lock(&shared).server);
    lock(&shared).lend(old);
    let sent = client(&shared, &parse("later", "SELECT 'later'"), 0);
    let evict = msg(b'C', &[b"Spgiam_1\0"]);
    assert!(sent.starts_with(&evict), "the oldest is closed first");
    let replies = [msg(b'3', &[]), msg(b'1', &[])].concat();
    assert_eq!(
        server(&shared, &replies, 4),
        msg(b'1', &[]),
        "its reply dropped"
    );
}

#[test]
fn deallocate_all_forgets_at_its_place_in_the_stream() {
    let query = msg(b'Q', &[b"DEALLOCATE ALL\0"]);
    let mut input = parse("st", "SELECT 1");
    input.extend(msg(b'S', &[]));
    input.extend(&query);
    // The same name and text again: a new statement (not 42P05), prepared anew (the server
    // dropped pgiam_1), and the Bind reaches it.
    input.extend(parse("st", "SELECT 1"));
    input.extend(bind("st"));
    let mut want = parse("pgiam_1", "SELECT 1");
    want.extend(msg(b'S', &[]));
    want.extend(&query);
    want.extend(parse("pgiam_2", "SELECT 1"));
    want.extend(bind("pgiam_2"));
    for at in 0..=input.len() {
        let shared = Shared::default();
        assert_eq!(client(&shared, &input, at), want, "split at {at}");
        assert!(!lock(&shared).forgot_params, "split at {at}");
    }
}

#[test]
fn reset_forgets_the_settings_and_keeps_the_statements() {
    let shared = Shared::default();
    let mut input = parse("st", "SELECT 1");
    input.extend(msg(b'Q', &[b"RESET ALL\0"]));
    input.extend(bind("st"));
    let mut want = parse("pgiam_1", "SELECT 1");
    want.extend(msg(b'Q', &[b"RESET ALL\0"]));
    want.extend(bind("pgiam_1"));
    assert_eq!(client(&shared, &input, 3), want);
    assert!(lock(&shared).forgot_params);
}

#[test]
fn an_unnamed_parse_of_discard_all_forgets_at_its_place() {
    let mut input = parse("st", "SELECT 1");
    input.extend(bind("st"));
    let discard = [parse("", "DISCARD ALL"), bind(""), msg(b'S', &[])].concat();
    input.extend(&discard);
    input.extend(bind("st"));
    let mut want = parse("pgiam_1", "SELECT 1");
    want.extend(bind("pgiam_1"));
    want.extend(&discard);
    want.extend(bind("st")); // forgotten: the server says 26000, as the client's own would
    for at in 0..=input.len() {
        let shared = Shared::default();
        assert_eq!(client(&shared, &input, at), want, "split at {at}");
        assert!(lock(&shared).forgot_params, "split at {at}");
    }
}

#[test]
fn an_unnamed_set_is_taken_only_when_its_own_statement_is_bound() {
    use super::setting::Verdict;
    let set = parse("", "SET extra_float_digits = 3");
    let (execute, sync) = (msg(b'E', &[b"\0", &[0; 4]]), msg(b'S', &[]));
    // pgjdbc's form: the unnamed statement bound and run.
    let mut ran = set.clone();
    for m in [bind(""), execute.clone(), sync.clone()] {
        ran.extend(m);
    }
    // An earlier named statement bound and run instead: the SET never ran.
    let mut other = set;
    for m in [bind("s1"), execute, sync] {
        other.extend(m);
    }
    for (input, took) in [(ran, true), (other, false)] {
        let shared = Shared::default();
        lock(&shared).parse(b"s1", b"SELECT 1\0\0\0", &mut Vec::new());
        let mut r = Rewrite::new(shared.clone(), true);
        r.judge_pins = true;
        r.feed(&input, &mut Vec::new());
        let verdict = std::mem::take(&mut lock(&shared).period).verdict();
        assert_eq!(matches!(verdict, Verdict::Took(_)), took, "{verdict:?}");
        assert_eq!(
            r.pinned, None,
            "an unnamed SET is judged by its transaction"
        );
    }
}
