//! The unix attestor: selectors from the kernel's view of the peer.
//!
//! The caller's uid and gid come from SO_PEERCRED on the Workload API socket: the kernel
//! records them at connect time, so the caller cannot forge them. With path discovery on,
//! the binary the process runs (`/proc/<pid>/exe`) becomes `unix:path:<path>`.

use tokio::net::unix::UCred;

use super::Selector;

/// Produces `unix:` selectors.
pub struct UnixAttestor {
    discover_path: bool,
}

impl UnixAttestor {
    /// `discover_path` adds `unix:path:` from `/proc/<pid>/exe`.
    pub fn new(discover_path: bool) -> Self {
        UnixAttestor { discover_path }
    }

    /// Selectors of a Unix caller: `unix:uid:<uid>`, `unix:gid:<gid>`, one
    /// `unix:supplementary_gid:<gid>` per supplementary group and, when enabled,
    /// `unix:path:<binary>`, as far as its process is readable.
    pub fn attest(&self, cred: &UCred) -> Vec<Selector> {
        let mut out = vec![
            Selector::new("unix", format!("uid:{}", cred.uid())),
            Selector::new("unix", format!("gid:{}", cred.gid())),
        ];
        if let Some(pid) = cred.pid() {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                for gid in supplementary_gids(&status) {
                    out.push(Selector::new("unix", format!("supplementary_gid:{gid}")));
                }
            }
            if self.discover_path {
                match std::fs::read_link(format!("/proc/{pid}/exe")) {
                    Ok(path) => {
                        // A deleted or replaced binary shows as "<path> (deleted)": that is
                        // not the file at <path>, so it gets no path selector.
                        let path = path.to_string_lossy();
                        if !path.ends_with(" (deleted)") {
                            out.push(Selector::new("unix", format!("path:{path}")));
                        }
                    }
                    Err(e) => {
                        tracing::debug!(pid, error = %e, "cannot read the caller's binary path")
                    }
                }
            }
        }
        out
    }
}

/// Parses the `Groups:` line of `/proc/<pid>/status`.
fn supplementary_gids(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_line_is_parsed() {
        let status =
            "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1000 \nVmPeak:\t1 kB\n";
        assert_eq!(supplementary_gids(status), vec![4, 24, 27, 1000]);
        assert!(supplementary_gids("Name: x\n").is_empty());
        assert!(supplementary_gids("Groups:\n").is_empty());
    }

    #[tokio::test]
    async fn own_process_gets_uid_gid_and_path_selectors() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let cred = a.peer_cred().unwrap();
        let sel = UnixAttestor::new(true).attest(&cred);
        let exe = std::env::current_exe().unwrap();
        assert!(sel.contains(&Selector::new("unix", format!("uid:{}", cred.uid()))));
        assert!(sel.contains(&Selector::new("unix", format!("path:{}", exe.display()))));
        let without = UnixAttestor::new(false).attest(&cred);
        assert!(!without.iter().any(|s| s.value.starts_with("path:")));
    }
}
