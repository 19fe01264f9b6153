//! File descriptors: raise the soft `RLIMIT_NOFILE` to the hard limit at start, tell
//! exhaustion apart from what it masquerades as (getaddrinfo reports `Name or service not
//! known` when it cannot open `/etc/hosts`), and keep one spare descriptor so that a client
//! arriving at exhaustion can still be accepted and told so instead of waiting in the
//! listen backlog.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{sqlstate, ClientError};

/// The descriptor limits of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The soft limit (what applies).
    pub soft: u64,
    /// The hard limit (how far the soft one may be raised).
    pub hard: u64,
}

/// The current limits.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every target
pub fn limits() -> io::Result<Limits> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Limits {
        soft: r.rlim_cur as u64,
        hard: r.rlim_max as u64,
    })
}

/// Raises the soft limit to the hard one; returns the limits before and after.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every target
pub fn raise_to_hard() -> io::Result<(Limits, Limits)> {
    let before = limits()?;
    if before.soft >= before.hard {
        return Ok((before, before));
    }
    let r = libc::rlimit {
        rlim_cur: before.hard as libc::rlim_t,
        rlim_max: before.hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((before, limits()?))
}

/// Raises the soft limit at start and logs the limits in force.
pub fn raise_and_log() {
    match raise_to_hard() {
        Ok((before, after)) if before.soft != after.soft => tracing::info!(
            soft = after.soft,
            hard = after.hard,
            was = before.soft,
            "file descriptor limit raised to the hard limit"
        ),
        Ok((_, after)) => {
            tracing::info!(
                soft = after.soft,
                hard = after.hard,
                "file descriptor limit"
            )
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}

/// The error says the process (EMFILE) or the system (ENFILE) is out of descriptors.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// `e` came from running out of descriptors, by its errno or, when the error hides it
/// (getaddrinfo's own codes), because a descriptor cannot be had right now.
pub fn caused_exhaustion(e: &io::Error) -> bool {
    is_exhaustion(e)
        || std::os::unix::net::UnixDatagram::unbound().is_err_and(|p| is_exhaustion(&p))
}

/// A client is waiting on listening socket `fd` (it polls readable), found without
/// taking a descriptor.
pub fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLIN != 0
}

/// What a client is told when the proxy is out of descriptors (SQLSTATE 53000).
pub fn exhausted_error() -> ClientError {
    let limit = limits().map_or_else(|_| "unknown".to_owned(), |l| l.soft.to_string());
    ClientError::new(
        sqlstate::INSUFFICIENT_RESOURCES,
        format!(
            "pg-iam-proxy: out of file descriptors (limit {limit}); raise LimitNOFILE / ulimit -n"
        ),
    )
}

/// One descriptor held back (`/dev/null`) to accept and refuse a client at exhaustion.
#[derive(Debug)]
pub struct Spare {
    file: Mutex<Option<File>>,
    /// No spare is held and nobody is using it: it could not be reopened.
    lost: AtomicBool,
}

impl Spare {
    /// Reserves the spare descriptor.
    pub fn reserve() -> Self {
        let spare = Self {
            file: Mutex::new(None),
            lost: AtomicBool::new(false),
        };
        spare.restore();
        spare
    }

    /// Closes the spare so its slot can be used; false if there was none.
    pub fn release(&self) -> bool {
        self.lock().take().is_some()
    }

    /// Reopens the spare after use (or after it was lost); marks it lost if it cannot.
    pub fn restore(&self) {
        let mut slot = self.lock();
        if slot.is_none() {
            *slot = File::open("/dev/null").ok();
        }
        self.lost.store(slot.is_none(), Ordering::Relaxed);
    }

    /// The spare could not be reopened after its last use: [`Spare::restore`] when
    /// descriptors are free again.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Accept failures for want of descriptors, warned about once per episode (then every
/// minute while it lasts), not once per failed accept.
#[derive(Default)]
pub struct Episode {
    since: Option<Instant>,
    warned: Option<Instant>,
    failures: u64,
}

impl Episode {
    const REPEAT: Duration = Duration::from_secs(60);

    /// Notes a failed accept; warns if this starts an episode or a minute has passed.
    pub fn warn(&mut self, e: &std::io::Error) {
        let now = Instant::now();
        self.since.get_or_insert(now);
        self.failures += 1;
        if self
            .warned
            .is_none_or(|at| now.duration_since(at) >= Self::REPEAT)
        {
            self.warned = Some(now);
            let limit = limits().map(|l| l.soft).unwrap_or(0);
            tracing::warn!(error = %e, limit, failures = self.failures,
                "out of file descriptors: new clients are refused (53000); raise LimitNOFILE / ulimit -n");
        }
    }

    /// Notes a successful accept; ends the episode, if any.
    pub fn over(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(failures = self.failures, lasted = ?since.elapsed(),
                "file descriptors available again");
            self.warned = None;
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_told_by_errno() {
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::ENFILE)));
        let other = io::Error::other("Name or service not known");
        assert!(!is_exhaustion(&other));
        assert!(!caused_exhaustion(&other), "descriptors are free here");
        let e = exhausted_error();
        assert_eq!(e.code, "53000");
        assert!(e.message.contains("out of file descriptors (limit "), "{e}");
    }

    #[test]
    fn the_spare_is_released_and_restored() {
        let spare = Spare::reserve();
        assert!(spare.release());
        assert!(!spare.release(), "only one");
        spare.restore();
        assert!(!spare.lost());
        assert!(spare.release());
    }
}
