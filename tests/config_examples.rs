//! Every example under config/ parses and validates, and the README's configuration reference
//! lists exactly the `run` command's flags (and the global ones), each with its environment variable.

use clap::CommandFactory;
use pg_iam_proxy::cli::Cli;
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

#[test]
fn the_readme_reference_lists_every_run_flag_and_no_other() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let cli = Cli::command();
    let run = cli.find_subcommand("run").expect("run");
    let mut documented: Vec<&str> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `--"))
        .filter_map(|l| l.split([' ', '`']).next())
        .collect();
    documented.sort_unstable();
    // The process-wide flags (log format, threads) sit on the top-level command, which also
    // takes `run`'s flags (plain `pg-iam-proxy` is `run`).
    let args = || cli.get_arguments().chain(run.get_arguments());
    let mut flags: Vec<&str> = args()
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "help")
        .collect();
    flags.sort_unstable();
    flags.dedup();
    assert_eq!(documented, flags, "README table vs. `run --help`");
    for arg in args() {
        if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) {
            let env = env.to_str().expect("utf-8");
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}")))
                .expect("row");
            assert!(
                row.contains(&format!("`{env}`")),
                "--{long}: {env} missing in {row}"
            );
        }
    }
}
