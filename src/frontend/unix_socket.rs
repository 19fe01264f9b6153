//! The Unix socket listener, created owner-only whatever the umask: the socket file is
//! bound under umask 0177 (so it never exists wider than 0600), then given its configured
//! group and mode, and only then listens (no client can connect before `listen`).

use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use socket2::{Domain, SockAddr, Socket, Type};

/// Pending connections the kernel queues (as std's `UnixListener::bind`).
const BACKLOG: i32 = 128;

/// Binds and listens on `path` with permission bits `mode`, owned by group `gid` if given.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> std::io::Result<tokio::net::UnixListener> {
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    let addr = SockAddr::unix(path)?;
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail. Files other
    // threads create in this instant get a narrower mode, never a wider one.
    let old = unsafe { libc::umask(0o177) };
    let bound = socket.bind(&addr);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    bound?;
    if let Some(gid) = gid {
        let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: cpath is a valid NUL-terminated path; uid -1 leaves the owner unchanged.
        if unsafe { libc::chown(cpath.as_ptr(), u32::MAX, gid) } != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    }
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    let fd = socket.into_raw_fd();
    // SAFETY: fd is a listening Unix stream socket we own; ownership moves to the listener.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    tokio::net::UnixListener::from_std(std_listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn created_owner_only_even_under_umask_000() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join(".s.PGSQL.1");
        // SAFETY: test-only mask change.
        let old = unsafe { libc::umask(0) };
        let listener = bind(&path, 0o600, None);
        unsafe { libc::umask(old) };
        let _listener = listener.expect("bind");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        let path2 = dir.path().join(".s.PGSQL.2");
        let _l2 = bind(&path2, 0o660, Some(0)).expect("bind with group");
        let meta = std::fs::metadata(&path2).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.gid(), 0);
    }
}
