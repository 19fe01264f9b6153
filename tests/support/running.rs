//! The real proxy binary as a child process, with its JSON log lines collected, for tests of
//! what only a process shows: signals, exit codes and timing, resource limits.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::StandIn;

pub const BIN: &str = env!("CARGO_BIN_EXE_pg-iam-proxy");

/// The proxy binary, with its stderr lines collected.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    /// `run` against `si` on 127.0.0.1:0 with `extra` flags.
    pub fn start(si: &StandIn, extra: &[&str]) -> Running {
        Self::spawn(Self::command(si, extra))
    }

    /// `run` against `si` listening on `listen` with `extra` flags.
    pub fn start_on(si: &StandIn, listen: &str, extra: &[&str]) -> Running {
        Self::spawn(Self::command_on(si, listen, extra))
    }

    /// The command [`Running::start`] runs, to adjust before [`Running::spawn`].
    pub fn command(si: &StandIn, extra: &[&str]) -> Command {
        Self::command_on(si, "127.0.0.1:0", extra)
    }

    /// The command [`Running::start_on`] runs.
    pub fn command_on(si: &StandIn, listen: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--listen", listen, "--host", "localhost"])
            .arg("--port")
            .arg(si.info.port.to_string())
            .arg("--ca-file")
            .arg(&si.info.ca_file)
            .args(["--log-format", "json"])
            .args(extra)
            .envs(si.aws_env())
            .env("PG_IAM_PROXY_LOG", "debug");
        cmd
    }

    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start proxy");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no log line with {needle:?}: {:#?}", self.seen));
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// The TCP address the proxy listens on (from its log).
    pub fn addr(&mut self) -> std::net::SocketAddr {
        let line = self.wait_for("\"listening\"");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log");
        v["fields"]["listen"]
            .as_str()
            .expect("listen field")
            .parse()
            .expect("addr")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill with our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
    }

    /// Waits until the process exits, at most `max`; kills it and panics after that.
    pub fn exit_within(&mut self, max: Duration) -> ExitStatus {
        let deadline = Instant::now() + max;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.seen.extend(self.lines.try_iter());
                panic!("still running after {max:?}: {:#?}", self.seen);
            }
            std::thread::sleep(Duration::from_millis(10)); // polling a process, bounded
        }
    }

    /// Waits (at most a minute) for the exit; the status and every log line.
    pub fn rest(mut self) -> (ExitStatus, Vec<String>) {
        let status = self.exit_within(Duration::from_secs(60));
        self.seen.extend(self.lines.iter());
        (status, std::mem::take(&mut self.seen))
    }

    /// All log lines so far (after exit: all of them).
    pub fn logs(&mut self) -> String {
        self.seen.extend(self.lines.try_iter());
        self.seen.join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
