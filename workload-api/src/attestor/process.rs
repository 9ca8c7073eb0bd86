//! Pins the calling process for the length of an attestation (the PID-reuse guard).
//!
//! SO_PEERCRED gives a PID, and a PID can be reused: the caller may exit and another
//! process take its PID while the agent reads `/proc`. Before attesting, the agent opens a
//! pidfd (which refers to exactly one process, forever) and records the process start time
//! (field 22 of `/proc/<pid>/stat`) and owner; afterwards it checks that the pidfd's process
//! is still running and that start time and owner are unchanged. If the race was lost
//! before the pidfd was opened, the start-time and owner checks still refuse a process that
//! is not the one that connected with those credentials.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// A process pinned by pidfd and start time.
pub struct ProcessWatch {
    pid: u32,
    pidfd: Option<OwnedFd>,
    start_time: u64,
    uid: u32,
    gid: u32,
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line, parsed after the last `)` so a
/// process name containing spaces or parentheses cannot shift the fields.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards; starttime is field 22.
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

fn start_time(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| std::io::Error::other("malformed /proc stat"))
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a PID and flags and returns a new file descriptor or -1;
    // it reads no memory of ours. A non-negative result is a fresh fd we now own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_alive(fd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal(2) with signal 0 only checks that the process exists; the
    // info pointer is null as allowed, and `fd` is a valid pidfd we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

impl ProcessWatch {
    /// Pins `pid`, which connected with `uid`/`gid`. Fails if the process is gone or is
    /// not owned by that user and group.
    pub fn new(pid: u32, uid: u32, gid: u32) -> std::io::Result<Self> {
        let pidfd = pidfd_open(pid);
        let watch = ProcessWatch {
            pid,
            start_time: start_time(pid)?,
            pidfd,
            uid,
            gid,
        };
        if !watch.owner_matches() {
            return Err(std::io::Error::other(
                "process owner differs from the caller's",
            ));
        }
        Ok(watch)
    }

    fn owner_matches(&self) -> bool {
        std::fs::metadata(format!("/proc/{}", self.pid))
            .map(|m| m.uid() == self.uid && m.gid() == self.gid)
            .unwrap_or(false)
    }

    /// True if the pinned process still runs as it did when pinned.
    pub fn is_alive(&self) -> bool {
        if let Some(fd) = &self.pidfd {
            if !pidfd_alive(fd) {
                return false;
            }
        }
        start_time(self.pid).ok() == Some(self.start_time) && self.owner_matches()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_odd_names() {
        let stat = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
    }

    #[test]
    fn a_live_process_stays_alive_and_an_exited_one_does_not() {
        let me = std::process::id();
        // SAFETY: getuid/getgid take no arguments and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let w = ProcessWatch::new(me, uid, gid).unwrap();
        assert!(w.is_alive());
        assert!(ProcessWatch::new(me, uid + 1, gid).is_err());

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let w = ProcessWatch::new(child.id(), uid, gid).unwrap();
        assert!(w.is_alive());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!w.is_alive());
    }
}
