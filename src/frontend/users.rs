//! The OS user and group database (NSS: `/etc/passwd`, `/etc/group`, LDAP, ...) through
//! libc's reentrant calls: names for uids, uids and gids for names, and a user's groups.
//! These calls may block (a directory service); callers run them off the async threads.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::time::Instant;

/// Buffer for one passwd/group entry; grown on ERANGE up to [`MAX_BUF`].
const START_BUF: usize = 1024;
const MAX_BUF: usize = 1 << 20;

/// A user's entry: name and primary group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// Login name.
    pub name: String,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
}

/// Runs a `get*_r` call with a growing buffer; `None` when there is no entry (or an error).
fn with_buf<T>(mut call: impl FnMut(&mut [libc::c_char]) -> (libc::c_int, bool, T)) -> Option<T> {
    let mut size = START_BUF;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        let (rc, found, value) = call(&mut buf);
        if rc == libc::ERANGE && size < MAX_BUF {
            size *= 4;
            continue;
        }
        return (rc == 0 && found).then_some(value);
    }
}

fn passwd_entry(pw: &libc::passwd) -> UserEntry {
    // SAFETY: pw_name points to a NUL-terminated string inside the buffer passed to getpw*_r.
    let name = unsafe { CStr::from_ptr(pw.pw_name) }
        .to_string_lossy()
        .into_owned();
    UserEntry {
        name,
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    }
}

/// The user with this uid, if the user database knows one.
pub fn user_by_uid(uid: u32) -> Option<UserEntry> {
    with_buf(|buf| {
        // SAFETY: all-zero is a valid passwd (null pointers, zero ids); it is only read
        // after getpwuid_r reports success and sets `out` to it.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf.len() is its true length.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
        let found = !out.is_null();
        (rc, found, found.then(|| passwd_entry(&pw)))
    })
    .flatten()
}

/// The user with this name.
pub fn user_by_name(name: &str) -> Option<UserEntry> {
    let cname = CString::new(name).ok()?;
    with_buf(|buf| {
        // SAFETY: as in user_by_uid.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf.len() is its true length.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        let found = !out.is_null();
        (rc, found, found.then(|| passwd_entry(&pw)))
    })
    .flatten()
}

/// The gid of the group with this name.
pub fn group_by_name(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    with_buf(|buf| {
        // SAFETY: all-zero is a valid group; read only after success.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf.len() is its true length.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        (rc, !out.is_null(), gr.gr_gid)
    })
}

/// Every group of `user` (its primary group included), as the group database lists them.
pub fn groups_of(user: &UserEntry) -> Vec<u32> {
    let Ok(cname) = CString::new(user.name.as_str()) else {
        return vec![user.gid];
    };
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: groups has room for `count` entries; getgrouplist writes at most that
        // many and sets `count` to the number it has (or needs, when it returns -1).
        let rc = unsafe {
            libc::getgrouplist(cname.as_ptr(), user.gid, groups.as_mut_ptr(), &mut count)
        };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= n || count > 65_536 {
            return vec![user.gid];
        }
        n = count;
    }
}

/// A uid or user name as given on the command line, resolved; `None` for an unknown name.
pub fn resolve_uid(spec: &str) -> Option<u32> {
    spec.parse()
        .ok()
        .or_else(|| user_by_name(spec).map(|u| u.uid))
}

/// A gid or group name, resolved; `None` for an unknown name.
pub fn resolve_gid(spec: &str) -> Option<u32> {
    spec.parse().ok().or_else(|| group_by_name(spec))
}

/// How long a uid's user entry is reused.
const NAME_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// At most this many uids are remembered (then the cache starts over).
const MAX_NAMES: usize = 4096;

/// User entries by uid, reused for [`NAME_TTL`]: once a user was seen, identifying its
/// connections reads no user database and opens no file (which matters at the descriptor
/// limit, and costs a few microseconds otherwise).
#[derive(Debug, Default)]
pub struct NameCache {
    entries: std::sync::Mutex<HashMap<u32, (Instant, Option<UserEntry>)>>,
}

impl NameCache {
    /// The entry of `uid` if a fresh one is cached (never blocks): `None` on a miss.
    pub fn cached(&self, uid: u32) -> Option<Option<UserEntry>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, entry) = entries.get(&uid)?;
        (at.elapsed() < NAME_TTL).then(|| entry.clone())
    }

    /// The entry of `uid` (blocking on a miss: run it on a blocking thread).
    pub fn user(&self, uid: u32) -> Option<UserEntry> {
        let lock = || {
            self.entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((at, entry)) = lock().get(&uid) {
            if at.elapsed() < NAME_TTL {
                return entry.clone();
            }
        }
        let entry = user_by_uid(uid);
        let mut entries = lock();
        if entries.len() >= MAX_NAMES {
            entries.clear();
        }
        entries.insert(uid, (Instant::now(), entry.clone()));
        entry
    }
}

/// The effective uid of this process.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_answers_without_blocking_only_what_it_holds() {
        let cache = NameCache::default();
        assert!(
            cache.cached(0).is_none(),
            "a miss is left to the blocking path"
        );
        let root = cache.user(0).expect("uid 0 has an entry");
        let cached = cache.cached(0).expect("now held").expect("an entry");
        assert_eq!(cached.name, root.name);
    }

    #[test]
    fn root_resolves_both_ways() {
        let root = user_by_uid(0).expect("uid 0 has an entry");
        assert_eq!(root.name, "root");
        assert_eq!(resolve_uid("root"), Some(0));
        assert_eq!(resolve_uid("0"), Some(0));
        assert_eq!(resolve_gid("0"), Some(0));
        assert!(groups_of(&root).contains(&0));
    }

    #[test]
    fn the_name_cache_answers_as_the_database_does() {
        let cache = NameCache::default();
        assert_eq!(cache.user(0), user_by_uid(0));
        assert_eq!(cache.user(0).map(|u| u.name), Some("root".to_owned()));
        assert_eq!(cache.user(4_000_000_000), None);
    }

    #[test]
    fn unknown_names_do_not_resolve() {
        assert_eq!(resolve_uid("no-such-user-pg-iam-proxy"), None);
        assert_eq!(resolve_gid("no-such-group-pg-iam-proxy"), None);
    }
}
