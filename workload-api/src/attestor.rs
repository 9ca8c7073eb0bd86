//! Workload attestation for Unix callers: selectors from the kernel's view of the peer.
//!
//! The caller's uid and gid come from SO_PEERCRED on the Workload API socket: the kernel
//! records them at connect time, so the caller cannot forge them.

use tokio::net::unix::UCred;

/// One workload selector, `type:value` (e.g. `unix` / `uid:1000`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    /// Attestor type.
    pub kind: String,
    /// Attestor-specific value.
    pub value: String,
}

impl Selector {
    fn unix(value: String) -> Self {
        Selector {
            kind: "unix".into(),
            value,
        }
    }
}

/// Selectors of a Unix caller: `unix:uid:<uid>`, `unix:gid:<gid>` and one
/// `unix:supplementary_gid:<gid>` per supplementary group when its process is readable.
pub fn unix_selectors(cred: &UCred) -> Vec<Selector> {
    let mut out = vec![
        Selector::unix(format!("uid:{}", cred.uid())),
        Selector::unix(format!("gid:{}", cred.gid())),
    ];
    if let Some(pid) = cred.pid() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            for gid in supplementary_gids(&status) {
                out.push(Selector::unix(format!("supplementary_gid:{gid}")));
            }
        }
    }
    out
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
    use super::supplementary_gids;

    #[test]
    fn groups_line_is_parsed() {
        let status =
            "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1000 \nVmPeak:\t1 kB\n";
        assert_eq!(supplementary_gids(status), vec![4, 24, 27, 1000]);
        assert!(supplementary_gids("Name: x\n").is_empty());
        assert!(supplementary_gids("Groups:\n").is_empty());
    }
}
