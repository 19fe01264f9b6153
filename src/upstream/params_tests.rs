//! [`super::params`] without a server: login frames to values, the greeting, FATAL.

use bytes::BytesMut;
use pgwire::messages::response::{ErrorResponse, NoticeResponse};
use pgwire::messages::startup::ParameterStatus;

use super::params::{encode_greeting, fatal, ServerParams};
use crate::wire;

fn status(name: &str, value: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    let p = ParameterStatus::new(name.into(), value.into());
    wire::encode(&p, "ParameterStatus", &mut buf).expect("encode");
    buf
}

#[test]
fn login_frames_become_ordered_values_and_notices_are_skipped() {
    let mut frames = status("application_name", "");
    let notice = NoticeResponse::new(vec![(b'S', "WARNING".into()), (b'M', "hm".into())]);
    wire::encode(&notice, "NoticeResponse", &mut frames).expect("encode");
    frames.extend(status("DateStyle", "ISO, MDY"));
    let mut p = ServerParams::from_login(&frames).expect("parse");
    let pairs = |p: &ServerParams| {
        p.iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs(&p), ["application_name=", "DateStyle=ISO, MDY"]);
    p.set("DateStyle".into(), "ISO, DMY".into());
    p.set("TimeZone".into(), "UTC".into());
    assert_eq!(
        pairs(&p),
        ["application_name=", "DateStyle=ISO, DMY", "TimeZone=UTC"],
        "in place, then appended"
    );
    assert!(
        ServerParams::from_login(&frames[..frames.len() - 1]).is_err(),
        "cut short"
    );
}

#[test]
fn the_greeting_is_a_whole_login_ending() {
    let mut frames = status("server_version", "15.1");
    frames.extend(status("TimeZone", "UTC"));
    let params = ServerParams::from_login(&frames).expect("parse");
    let mut greeting = encode_greeting(&params, 4242, -7).expect("encode");
    let mut expected = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
    expected.extend_from_slice(&frames);
    expected.extend_from_slice(&[b'K', 0, 0, 0, 12, 0, 0, 0x10, 0x92]);
    expected.extend_from_slice(&(-7i32).to_be_bytes());
    expected.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
    assert_eq!(&greeting.split()[..], &expected[..]);
}

#[test]
fn fatal_rewrites_both_severities_only() {
    let e = ErrorResponse::new(vec![
        (b'S', "ERROR".into()),
        (b'V', "ERROR".into()),
        (b'C', "22023".into()),
        (b'M', "invalid value".into()),
    ]);
    let mut frame = BytesMut::new();
    wire::encode(&e, "ErrorResponse", &mut frame).expect("encode");
    let out: ErrorResponse = wire::decode(fatal(&frame), "ErrorResponse").expect("decode");
    let want: Vec<(u8, String)> = vec![
        (b'S', "FATAL".into()),
        (b'V', "FATAL".into()),
        (b'C', "22023".into()),
        (b'M', "invalid value".into()),
    ];
    assert_eq!(out.fields, want);
    assert_eq!(&fatal(b"junk")[..], b"junk", "not an error: as it was");
}

#[test]
fn a_value_is_found_by_its_name_only() {
    let mut p = ServerParams::default();
    p.set("a".into(), "application_name".into());
    p.set("application_name".into(), "psql".into());
    p.set("empty".into(), String::new());
    assert_eq!(
        p.get("application_name"),
        Some("psql"),
        "not the value named so"
    );
    assert_eq!(p.get("a"), Some("application_name"));
    assert_eq!(p.get("empty"), Some(""));
    assert_eq!(p.get("psql"), None, "a value is no name");
    assert_eq!(p.get("applicat"), None);
    assert_eq!(ServerParams::default().get("a"), None);
}
