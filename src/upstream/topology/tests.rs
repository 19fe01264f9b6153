use std::time::Duration;

use super::probe::Member;
use super::*;
use crate::config::TlsMode;
use crate::metrics::Metrics;
use crate::upstream::tls::client_config;

const CLUSTER: &str = "app.cluster-abc.us-east-1.rds.amazonaws.com";

fn topology(host: &str) -> Option<Topology> {
    let tls = client_config(None, TlsMode::VerifyFull).expect("tls");
    let ep = Endpoint::new(host, 5432, tls, None).expect("endpoint");
    let rules = ["inst-2.abc.us-east-1.rds.amazonaws.com:5432:127.0.0.1:6000"
        .parse()
        .expect("rule")];
    let metrics = Metrics::default().topology.for_target("t");
    Topology::for_target("t", &ep, None, &rules, metrics)
}

fn members(writer: &str, all: &[&str]) -> Vec<Member> {
    all.iter()
        .map(|id| Member {
            id: (*id).to_owned(),
            writer: *id == writer,
        })
        .collect()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(1)
}

#[tokio::test]
async fn a_writer_target_routes_to_the_writer_once_known_and_after_a_switch() {
    let t = topology(CLUSTER).expect("a cluster endpoint");
    assert!(
        t.route(soon()).await.is_none(),
        "unknown: the cluster endpoint"
    );
    assert!(t.is_current(CLUSTER));
    t.set("inst-1", &members("inst-1", &["inst-1", "inst-2"]));
    let ep = t.route(soon()).await.expect("the writer");
    assert_eq!(ep.host, "inst-1.abc.us-east-1.rds.amazonaws.com");
    assert!(t.is_current("inst-1.abc.us-east-1.rds.amazonaws.com"));
    assert!(!t.is_current(CLUSTER), "bootstrap connections are replaced");
    t.fault("test");
    assert!(
        !t.is_current("inst-1.abc.us-east-1.rds.amazonaws.com"),
        "suspect while switching"
    );
    let waiting = t.route(Instant::now() + Duration::from_secs(5));
    let switch = async {
        tokio::task::yield_now().await;
        t.set("inst-2", &members("inst-2", &["inst-1", "inst-2"]));
    };
    let (ep, ()) = tokio::join!(waiting, switch);
    let ep = ep.expect("the new writer");
    assert_eq!(ep.host, "inst-2.abc.us-east-1.rds.amazonaws.com");
    assert_eq!(
        ep.dial,
        ("127.0.0.1".to_owned(), 6000),
        "--connect-to applies"
    );
    assert!(!t.is_current("inst-1.abc.us-east-1.rds.amazonaws.com"));
    assert_eq!(t.readers(), ["inst-1"]);
}

#[tokio::test]
async fn a_reader_target_takes_the_readers_in_turn() {
    let t = topology("app.cluster-ro-abc.us-east-1.rds.amazonaws.com").expect("reader");
    t.set(
        "inst-1",
        &members("inst-1", &["inst-1", "inst-2", "inst-3"]),
    );
    let mut hosts = Vec::new();
    for _ in 0..4 {
        hosts.push(t.route(soon()).await.expect("a reader").host.clone());
    }
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert!(hosts.iter().all(|h| !h.starts_with("inst-1.")));
    t.set("inst-1", &members("inst-1", &["inst-1", "inst-3"]));
    assert!(
        !t.is_current("inst-2.abc.us-east-1.rds.amazonaws.com"),
        "gone"
    );
}

#[tokio::test]
async fn other_hosts_have_no_topology_and_a_switch_that_finds_nothing_stops_holding_logins() {
    assert!(topology("localhost").is_none());
    let t = topology(CLUSTER).expect("cluster");
    t.set("inst-1", &members("inst-1", &["inst-1"]));
    t.fault("test");
    let waiting = t.route(Instant::now() + Duration::from_secs(5));
    let (ep, ()) = tokio::join!(waiting, async { t.give_up_switch() });
    assert_eq!(
        ep.expect("as before").host,
        "inst-1.abc.us-east-1.rds.amazonaws.com"
    );
    t.set_not_aurora();
    assert!(t.route(soon()).await.is_none());
}
