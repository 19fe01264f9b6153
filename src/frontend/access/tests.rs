use super::*;
use crate::frontend::peer::Unknown;
use crate::frontend::users::UserEntry;

fn local(uid: u32, name: &str, groups: &[u32]) -> Identity {
    Identity {
        client: Client::Local {
            uid,
            user: Some(UserEntry {
                name: name.into(),
                uid,
                gid: uid,
            }),
            groups: groups.to_vec(),
        },
        addr: "127.0.0.1:50000".into(),
    }
}

fn access() -> Access {
    Access {
        own_uid: 999,
        ..Access::default()
    }
}

#[test]
fn only_the_own_user_and_root_by_default() {
    let a = access();
    assert!(a.admit(&local(999, "proxy", &[])).is_ok());
    assert!(a.admit(&local(0, "root", &[])).is_ok());
    let refused = a.admit(&local(1001, "alice", &[1001])).expect_err("alice");
    assert_eq!(refused.reason(), "uid");
    let e = refused.to_error(&a);
    assert_eq!(e.code, "28000");
    assert!(e.message.contains("\"alice\" (uid 1001)"), "{}", e.message);
    let hint = e.hint.expect("hint");
    assert!(
        hint.contains("--allow-uid 1001 or --allow-uid alice"),
        "{hint}"
    );
}

#[test]
fn allowed_uids_and_groups_and_the_opt_out() {
    let mut a = access();
    a.uids = vec![1001];
    a.gids = vec![50];
    assert!(a.admit(&local(1001, "alice", &[])).is_ok());
    assert!(a.admit(&local(1002, "bob", &[7, 50])).is_ok());
    assert!(a.admit(&local(1003, "carol", &[7])).is_err());
    let unknown = Identity {
        client: Client::Unknown(Unknown::NotFound),
        addr: "127.0.0.1:1".into(),
    };
    assert_eq!(
        a.admit(&unknown).expect_err("unknown").reason(),
        "unknown_owner"
    );
    a.any_local = true;
    assert!(a.admit(&local(1003, "carol", &[7])).is_ok());
    assert!(a.admit(&unknown).is_ok());
}

#[test]
fn database_users_by_name_map_or_fixed() {
    let a = access();
    let alice = local(1001, "alice", &[]);
    let rule = DbUserRule::ByName;
    assert_eq!(rule.decide(&a, &alice, "alice").expect("own name"), "alice");
    let refused = rule.decide(&a, &alice, "admin").expect_err("other name");
    assert_eq!(refused.reason(), "db_user");
    let e = refused.to_error(&a);
    assert!(
        e.message.contains("database user \"admin\""),
        "{}",
        e.message
    );
    assert!(rule.decide(&a, &local(999, "proxy", &[]), "admin").is_ok());
    let map = UserMap::parse("alice iam_dbuser\n").expect("map");
    let rule = DbUserRule::Map(Arc::new(map));
    assert!(rule.decide(&a, &alice, "iam_dbuser").is_ok());
    assert!(rule.decide(&a, &alice, "alice").is_err());
    let fixed = DbUserRule::Fixed("iam_dbuser".into());
    assert_eq!(
        fixed.decide(&a, &alice, "admin").expect("fixed"),
        "iam_dbuser"
    );
}
