//! Every example under config/ parses and validates.

use pg_iam_proxy::config::{build, read_file, ProxyArgs, TargetArgs};

#[test]
fn every_example_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let file = read_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let config = build(&ProxyArgs::default(), &TargetArgs::default(), &file)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!config.targets.is_empty(), "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 3, "examples found: {seen}");
}

#[test]
fn the_multi_target_example_declares_three_listeners() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/multi-target.toml");
    let config = build(
        &ProxyArgs::default(),
        &TargetArgs::default(),
        &read_file(path.as_ref()).expect("read"),
    )
    .expect("valid");
    let names: Vec<_> = config.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["orders-writer", "orders-reader", "reporting-eu"]);
    assert_eq!(config.targets[2].region.as_deref(), Some("eu-west-1"));
    assert_eq!(config.targets[1].db_user.as_deref(), Some("iam_dbuser"));
}
