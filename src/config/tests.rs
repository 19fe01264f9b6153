use super::*;

fn parse(text: &str) -> FileConfig {
    toml::from_str(text).expect("valid toml")
}

#[test]
fn flags_beat_file_targets_and_defaults() {
    let file = parse(
        r#"
        [proxy]
        handshake_timeout = "3s"
        [defaults]
        region = "eu-west-1"
        tls_mode = "verify-ca"
        [[targets]]
        name = "a"
        host = "a.example.com"
        listen = "127.0.0.1:6001"
        region = "us-west-2"
        [[targets]]
        host = "b.example.com"
        listen = "127.0.0.1:6002"
        "#,
    );
    let cli = TargetArgs {
        db_user: Some("iam_dbuser".into()),
        ..Default::default()
    };
    let proxy = ProxyArgs {
        handshake_timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    let config = build(&proxy, &cli, &file).expect("valid");
    assert_eq!(config.proxy.handshake_timeout, Duration::from_secs(5));
    assert_eq!(config.proxy.connect_timeout, Duration::from_secs(15));
    let [a, b] = &config.targets[..] else {
        panic!("two targets")
    };
    assert_eq!(
        (a.name.as_str(), a.region.as_deref()),
        ("a", Some("us-west-2"))
    );
    assert_eq!(
        (b.name.as_str(), b.region.as_deref()),
        ("b.example.com", Some("eu-west-1"))
    );
    assert_eq!(b.tls_mode, TlsMode::VerifyCa);
    assert!(config
        .targets
        .iter()
        .all(|t| t.db_user.as_deref() == Some("iam_dbuser")));
}

#[test]
fn unknown_keys_are_rejected() {
    let err = toml::from_str::<FileConfig>("[defaults]\nhots = \"x\"\n").expect_err("unknown");
    assert!(err.to_string().contains("unknown field `hots`"), "{err}");
}

#[test]
fn a_host_is_required_and_defaults_apply() {
    let err = build(
        &ProxyArgs::default(),
        &TargetArgs::default(),
        &FileConfig::default(),
    )
    .expect_err("no host");
    assert!(err.to_string().contains("--host"), "{err}");
    let cli = TargetArgs {
        host: Some("db".into()),
        ..Default::default()
    };
    let config = build(&ProxyArgs::default(), &cli, &FileConfig::default()).expect("valid");
    let t = &config.targets[0];
    assert_eq!(t.listen, SocketAddr::from(([127, 0, 0, 1], 5432)));
    assert_eq!((t.port, t.tls_mode), (5432, TlsMode::VerifyFull));
}

#[test]
fn single_target_flags_conflict_with_several_file_targets() {
    let file = parse(
        "[[targets]]\nhost = \"a\"\nlisten = \"127.0.0.1:1\"\n[[targets]]\nhost = \"b\"\nlisten = \"127.0.0.1:2\"\n",
    );
    let cli = TargetArgs {
        host: Some("c".into()),
        ..Default::default()
    };
    assert!(build(&ProxyArgs::default(), &cli, &file).is_err());
}

#[test]
fn duplicate_listeners_are_rejected() {
    let file = parse("[[targets]]\nhost = \"a\"\n[[targets]]\nhost = \"b\"\n");
    let err = build(&ProxyArgs::default(), &TargetArgs::default(), &file).expect_err("dup");
    assert!(err.to_string().contains("both listen"), "{err}");
}

#[test]
fn network_listeners_need_explicit_consent_tls_and_client_auth() {
    let on = |listen: &str| TargetArgs {
        host: Some("db".into()),
        listen: Some(listen.parse().expect("addr")),
        ..Default::default()
    };
    let file = FileConfig::default();
    for local in [
        "127.0.0.1:5432",
        "127.0.0.2:5432",
        "[::1]:5432",
        "[::ffff:127.0.0.1]:5432",
    ] {
        build(&ProxyArgs::default(), &on(local), &file).expect(local);
    }
    for remote in ["0.0.0.0:5432", "10.1.2.3:5432", "[::]:5432"] {
        let err = build(&ProxyArgs::default(), &on(remote), &file).expect_err(remote);
        assert!(err.to_string().contains("--allow-remote-clients"), "{err}");
    }
    let consent = ProxyArgs {
        allow_remote_clients: Some(true),
        ..Default::default()
    };
    let err = build(&consent, &on("0.0.0.0:5432"), &file).expect_err("no TLS");
    assert!(err.to_string().contains("--client-tls-cert"), "{err}");
    let secured = ProxyArgs {
        client_tls_cert: Some("cert.pem".into()),
        client_tls_key: Some("key.pem".into()),
        client_auth_file: Some("users.txt".into()),
        ..consent.clone()
    };
    let config = build(&secured, &on("0.0.0.0:5432"), &file).expect("consented and secured");
    assert!(config.proxy.allow_remote_clients);
    let no_auth = ProxyArgs {
        client_auth_file: None,
        ..secured.clone()
    };
    let err = build(&no_auth, &on("0.0.0.0:5432"), &file).expect_err("no client auth");
    assert!(err.to_string().contains("--client-auth-file"), "{err}");
    let in_file = parse(
        "[proxy]\nallow_remote_clients = true\nclient_tls_cert = \"c\"\nclient_tls_key = \"k\"\n\
         client_auth_file = \"a\"\n",
    );
    build(&ProxyArgs::default(), &on("0.0.0.0:5432"), &in_file).expect("all in the file");
    let half = ProxyArgs {
        client_tls_key: None,
        ..secured
    };
    let err = build(&half, &on("127.0.0.1:5432"), &file).expect_err("cert without key");
    assert!(err.to_string().contains("go together"), "{err}");
    let ca_only = ProxyArgs {
        client_ca_file: Some("ca.pem".into()),
        ..consent.clone()
    };
    let err = build(&ca_only, &on("127.0.0.1:5432"), &file).expect_err("a CA without TLS");
    assert!(err.to_string().contains("--client-ca-file needs"), "{err}");
    let certs_only = ProxyArgs {
        client_tls_cert: Some("cert.pem".into()),
        client_tls_key: Some("key.pem".into()),
        ..ca_only
    };
    build(&certs_only, &on("0.0.0.0:5432"), &file).expect("client certificates suffice");
}

#[test]
fn credentials_timeout_defaults_below_the_connect_timeout_and_must_stay_there() {
    let target = TargetArgs {
        host: Some("db.example.com".into()),
        ..Default::default()
    };
    let build_with = |text: &str| build(&ProxyArgs::default(), &target, &parse(text));
    let config = build_with("").expect("defaults");
    assert_eq!(config.proxy.credentials_timeout, Duration::from_secs(5));
    let config = build_with("[proxy]\nconnect_timeout = \"4s\"\n").expect("short connect");
    assert_eq!(config.proxy.credentials_timeout, Duration::from_secs(2));
    let config = build_with("[proxy]\ncredentials_timeout = \"8s\"\n").expect("given");
    assert_eq!(config.proxy.credentials_timeout, Duration::from_secs(8));
    for bad in [
        "credentials_timeout = \"15s\"",
        "credentials_timeout = \"0s\"",
    ] {
        let err = build_with(&format!("[proxy]\n{bad}\n")).expect_err(bad);
        assert!(err.to_string().contains("under connect_timeout"), "{err}");
    }
}

#[test]
fn pool_settings_default_to_session_pooling_and_are_checked() {
    let host = TargetArgs {
        host: Some("db.example.com".into()),
        ..Default::default()
    };
    let config = build(&ProxyArgs::default(), &host, &FileConfig::default()).expect("valid");
    let pool = &config.targets[0].pool;
    assert_eq!(pool.mode, PoolMode::Session);
    assert_eq!((pool.size, pool.min_idle), (50, 0));
    assert_eq!(pool.reset_query, "DISCARD ALL");
    let file = parse(
        r#"
        [defaults]
        pool_mode = "none"
        pool_size = 4
        server_lifetime = "10m"
        "#,
    );
    let config = build(&ProxyArgs::default(), &host, &file).expect("valid");
    let pool = &config.targets[0].pool;
    assert_eq!((pool.mode, pool.size), (PoolMode::None, 4));
    assert_eq!(pool.lifetime, Duration::from_secs(600));
    for (args, want) in [
        ("pool_size = 0", "at least 1"),
        ("pool_size = 2\npool_min_idle = 3", "cannot exceed"),
        (r#"server_reset_query = " ""#, "cannot be empty"),
    ] {
        let file = parse(&format!("[defaults]\n{args}"));
        let err = build(&ProxyArgs::default(), &host, &file).expect_err(args);
        assert!(err.to_string().contains(want), "{args}: {err}");
    }
}

#[test]
fn connect_to_rules_parse_in_order_and_flags_replace_the_file() {
    let file = parse(
        "[proxy]\nconnect_to = [\"a:5432:127.0.0.1:1\", \"b:5432:127.0.0.1:2\"]\n\
         [defaults]\nhost = \"a\"\n",
    );
    let c = build(&ProxyArgs::default(), &TargetArgs::default(), &file).expect("valid");
    let froms: Vec<_> = c.proxy.connect_to.iter().map(|r| r.to_string()).collect();
    assert_eq!(froms, ["a:5432:127.0.0.1:1", "b:5432:127.0.0.1:2"]);
    let flags = ProxyArgs {
        connect_to: Some(vec!["c:1:d:2".into()]),
        ..ProxyArgs::default()
    };
    let c = build(&flags, &TargetArgs::default(), &file).expect("valid");
    assert_eq!(c.proxy.connect_to.len(), 1);
    let bad = ProxyArgs {
        connect_to: Some(vec!["c:1:d".into()]),
        ..ProxyArgs::default()
    };
    let e = build(&bad, &TargetArgs::default(), &file).expect_err("invalid");
    assert!(e.to_string().contains("--connect-to \"c:1:d\""), "{e}");
}

#[test]
fn access_settings_from_the_file_and_the_socket_mode() {
    let host = TargetArgs {
        host: Some("db.example.com".into()),
        ..Default::default()
    };
    let file = parse(
        r#"
        [proxy]
        allow_uid = [1000, "alice"]
        allow_gid = ["staff"]
        [defaults]
        unix_socket_group = "staff"
        "#,
    );
    let config = build(&ProxyArgs::default(), &host, &file).expect("valid");
    assert_eq!(config.proxy.allow_uid, ["1000", "alice"]);
    assert_eq!(config.proxy.allow_gid, ["staff"]);
    assert!(!config.proxy.allow_any_local_user);
    assert_eq!(config.targets[0].unix_socket_mode, 0o660, "group: 0660");
    let plain = build(&ProxyArgs::default(), &host, &FileConfig::default()).expect("valid");
    assert_eq!(
        plain.targets[0].unix_socket_mode, 0o600,
        "default: owner only"
    );
    let flags = ProxyArgs {
        allow_uid: Some(vec!["bob".into()]),
        ..Default::default()
    };
    let config = build(&flags, &host, &file).expect("valid");
    assert_eq!(config.proxy.allow_uid, ["bob"], "flags beat the file");
    for bad in ["0999", "1777", "rw"] {
        let file = parse(&format!("[defaults]\nunix_socket_mode = \"{bad}\""));
        let err = build(&ProxyArgs::default(), &host, &file).expect_err(bad);
        assert!(err.to_string().contains("octal"), "{bad}: {err}");
    }
}
