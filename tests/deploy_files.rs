//! The deployment examples stay in step with the binary: every flag they pass exists, the
//! sidecar probes the real endpoints, and the image runs as non-root.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pg-iam-proxy");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).expect(path)
}

fn flags(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(|c: char| c.is_whitespace() || c == '=' || c == '"')
        .filter(|w| w.starts_with("--") && w[2..].starts_with(|c: char| c.is_ascii_lowercase()))
        .filter(|w| w[2..].chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn deploy_files_use_only_real_flags_and_endpoints() {
    let help = Command::new(BIN)
        .args(["run", "--help"])
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let sidecar = read("deploy/kubernetes/sidecar.yaml");
    let unit = read("deploy/systemd/pg-iam-proxy.service");
    for flag in flags(&sidecar).into_iter().chain(flags(&unit)) {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "unknown flag {flag}"
        );
    }
    for path in [
        "path: /startup",
        "path: /liveness",
        "path: /readiness",
        "restartPolicy: Always",
    ] {
        assert!(sidecar.contains(path), "{path}");
    }
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("USER nonroot"));
    assert!(unit.contains("ExecStart=/usr/local/bin/pg-iam-proxy run --config"));
    assert!(
        unit.lines().any(|l| l.starts_with("LimitNOFILE=")),
        "the unit sets the descriptor limit"
    );
}
