//! Pod UID and container ID from `/proc/<pid>/cgroup`.
//!
//! The cgroup path of a process is set by the kubelet and the container runtime, not by
//! the workload, so it is the authoritative link from a PID to a pod. Both cgroup v1 lines
//! (`<id>:<controllers>:<path>`) and the v2 line (`0::<path>`) are read. Each path is walked
//! from its last segment backwards: the first 64-hex-digit word is the container ID
//! (docker, containerd, CRI-O, `cri-containerd:<id>` and `<runtime>-<id>.scope` forms),
//! and the first `pod<uid>` word before it is the pod UID, with the systemd driver's `_`
//! escaping turned back into `-`.

use std::sync::OnceLock;

use regex::Regex;

/// What the cgroup file says about a containerised process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The pod's UID (with dashes), when the path names one.
    pub pod_uid: Option<String>,
    /// The container ID (64 lowercase hex digits).
    pub container_id: String,
}

fn container_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\b([[:xdigit:]]{64})\b").unwrap_or_else(|_| unreachable!()))
}

fn pod_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"\bpod([[:xdigit:]]{8}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{4}[-_][[:xdigit:]]{12})\b",
        )
        .unwrap_or_else(|_| unreachable!())
    })
}

/// Pod UID and container ID of one cgroup path, if it names a container.
fn from_path(path: &str) -> Option<ContainerInfo> {
    let segments: Vec<&str> = path.split('/').collect();
    for (i, seg) in segments.iter().enumerate().rev() {
        let Some(m) = container_re().captures_iter(seg).last() else {
            continue;
        };
        let id = m.get(1)?;
        let container_id = id.as_str().to_ascii_lowercase();
        // The pod UID is before the container ID: first in this segment's prefix, then in
        // earlier segments, nearest first.
        let before = std::iter::once(&seg[..id.start()]).chain(segments[..i].iter().rev().copied());
        let pod_uid = before.into_iter().find_map(|s| {
            pod_re()
                .captures_iter(s)
                .last()
                .and_then(|c| c.get(1))
                .map(|u| u.as_str().replace('_', "-").to_ascii_lowercase())
        });
        return Some(ContainerInfo {
            pod_uid,
            container_id,
        });
    }
    None
}

/// Parses a whole `/proc/<pid>/cgroup` file. `Ok(None)` means the process is not in a
/// container; lines naming different pods or containers are an error.
pub fn parse(text: &str) -> Result<Option<ContainerInfo>, String> {
    let mut found: Option<ContainerInfo> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!("malformed cgroup line {line:?}"));
        };
        let Some(info) = from_path(path) else {
            continue;
        };
        found = match found {
            None => Some(info),
            Some(prev) => {
                if prev.container_id != info.container_id {
                    return Err("multiple container IDs found in cgroups".into());
                }
                match (&prev.pod_uid, &info.pod_uid) {
                    (Some(a), Some(b)) if a != b => {
                        return Err("multiple pod UIDs found in cgroups".into())
                    }
                    // A line that names the pod wins over one that does not.
                    (None, Some(_)) => Some(info),
                    _ => Some(prev),
                }
            }
        };
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pod: &str, container: &str) -> Option<ContainerInfo> {
        Some(ContainerInfo {
            pod_uid: Some(pod.into()),
            container_id: container.into(),
        })
    }

    #[test]
    fn cgroup_v1_docker_cgroupfs() {
        assert_eq!(
            parse(include_str!("testdata/v1-docker.txt")).unwrap(),
            info(
                "2c48913c-b29f-11e7-9350-020968147796",
                "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
            )
        );
    }

    #[test]
    fn cgroup_v1_containerd_systemd_driver() {
        assert_eq!(
            parse(include_str!("testdata/v1-containerd-systemd.txt")).unwrap(),
            info(
                "7f1c2a4e-3b5d-4c6e-8f9a-0b1c2d3e4f50",
                "4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b"
            )
        );
    }

    #[test]
    fn cgroup_v2_containerd_systemd_driver() {
        assert_eq!(
            parse(include_str!("testdata/v2-containerd-systemd.txt")).unwrap(),
            info(
                "0ab1c2d3-e4f5-4a6b-9c8d-7e6f5a4b3c21",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            )
        );
    }

    #[test]
    fn cgroup_v2_crio() {
        assert_eq!(
            parse(include_str!("testdata/v2-crio.txt")).unwrap(),
            info(
                "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a",
                "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12a1d47d0e0d62c4c0e0c0b0a1"
            )
        );
    }

    #[test]
    fn cgroup_v2_containerd_cgroupfs_colon_form() {
        assert_eq!(
            parse(include_str!("testdata/v2-containerd-cgroupfs.txt")).unwrap(),
            info(
                "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            )
        );
    }

    #[test]
    fn cgroup_v2_docker_systemd_driver() {
        assert_eq!(
            parse(include_str!("testdata/v2-docker-systemd.txt")).unwrap(),
            info(
                "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6",
                "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
            )
        );
    }

    #[test]
    fn host_processes_are_not_containers() {
        assert_eq!(
            parse(include_str!("testdata/v2-host-process.txt")).unwrap(),
            None
        );
        assert_eq!(parse("").unwrap(), None);
    }

    #[test]
    fn conflicting_lines_and_garbage_are_errors() {
        assert!(parse(include_str!("testdata/v1-conflicting.txt")).is_err());
        assert!(parse("no colons here").is_err());
    }

    #[test]
    fn a_container_without_a_pod_uid_is_reported_as_such() {
        let got = parse("0::/system.slice/docker-fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210.scope")
            .unwrap()
            .unwrap();
        assert_eq!(got.pod_uid, None);
    }
}
