//! A frozen upstream: the stand-in's PostgreSQL stopped with SIGSTOP (the postmaster, then
//! every child), so that it hangs with every socket open, as a server under a stuck kernel,
//! a frozen VM or a network partition does; SIGCONT thaws it. Dropping a [`Frozen`] always
//! thaws, so a failing test leaves no stopped server behind.
//!
//! The postmaster is found through `postmaster.pid` in the data directory, its children
//! through `/proc`. New connections while frozen complete their TCP handshake in the
//! kernel backlog and then get no answer.

use std::path::Path;
use std::time::{Duration, Instant};

use super::StandIn;

/// The stopped processes of one server.
pub struct Frozen {
    pids: Vec<i32>,
}

impl Frozen {
    /// Stops `si`'s PostgreSQL: the postmaster first (so it forks nothing new), then each
    /// of its children; returns once all are stopped.
    pub fn freeze(si: &StandIn) -> Frozen {
        let postmaster = postmaster_pid(&si.info.dir.join("data"));
        let mut frozen = Frozen {
            pids: vec![postmaster],
        };
        send(postmaster, libc::SIGSTOP);
        wait_stopped(postmaster);
        for child in children(postmaster) {
            send(child, libc::SIGSTOP);
            frozen.pids.push(child);
        }
        for &pid in &frozen.pids[1..] {
            wait_stopped(pid);
        }
        frozen
    }

    /// How many processes are stopped.
    pub fn count(&self) -> usize {
        self.pids.len()
    }

    /// Lets the server run again (children first, then the postmaster).
    pub fn thaw(&mut self) {
        for pid in self.pids.drain(..).rev() {
            send(pid, libc::SIGCONT);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

fn postmaster_pid(data: &Path) -> i32 {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).expect("postmaster.pid");
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid on the first line of postmaster.pid")
}

/// (state, parent) from /proc/PID/stat; the command name may hold spaces and parentheses,
/// so fields are read after the last ')'.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

fn children(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(_, p)| p == parent))
        .collect()
}

fn send(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a pid read from the server's own files; ESRCH (gone) is fine.
    unsafe { libc::kill(pid, signal) };
}

/// Waits (bounded) until `pid` is stopped or gone.
fn wait_stopped(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some((state, _)) = stat(pid) {
        if state == 'T' {
            return;
        }
        assert!(Instant::now() < deadline, "{pid} did not stop");
        std::thread::yield_now();
    }
}
