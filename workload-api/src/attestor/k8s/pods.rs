//! The kubelet's `/pods` answer and how a container is found in it.
//!
//! Only the fields the attestor needs are decoded; everything else in the pod list is
//! ignored, so new kubelet versions do not break parsing.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::super::Selector;

/// `GET /pods` body (a `v1.PodList`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PodList {
    /// The pods on this node.
    pub items: Vec<Pod>,
}

/// The parts of a `v1.Pod` used for selectors.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Pod {
    /// Name, namespace, UID, labels.
    pub metadata: Metadata,
    /// Service account, node, containers.
    pub spec: Spec,
    /// Container statuses (where container IDs are).
    pub status: Status,
}

/// `metadata` of a pod.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// `spec` of a pod.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Spec {
    /// Service account the pod runs as.
    pub service_account_name: String,
    /// Node the pod is scheduled on.
    pub node_name: String,
}

/// `status` of a pod.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Status {
    /// App containers.
    pub container_statuses: Vec<ContainerStatus>,
    /// Init containers.
    pub init_container_statuses: Vec<ContainerStatus>,
}

/// One container's status.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ContainerStatus {
    /// Container name.
    pub name: String,
    /// Image as specified.
    pub image: String,
    /// Resolved image ID (digest).
    #[serde(rename = "imageID")]
    pub image_id: String,
    /// `<runtime>://<id>`, empty until the container is created.
    #[serde(rename = "containerID")]
    pub container_id: String,
}

impl ContainerStatus {
    /// The bare container ID, without the `<runtime>://` prefix.
    fn bare_id(&self) -> &str {
        self.container_id
            .split_once("://")
            .map(|(_, id)| id)
            .unwrap_or(&self.container_id)
    }
}

/// The pod and container a container ID belongs to.
pub struct Found<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The container's status.
    pub container: &'a ContainerStatus,
}

/// Finds `container_id` (restricted to `pod_uid` when known). Two matching pods is an error.
pub fn find<'a>(
    list: &'a PodList,
    pod_uid: Option<&str>,
    container_id: &str,
) -> Result<Option<Found<'a>>, String> {
    let mut found = None;
    for pod in &list.items {
        if pod_uid.is_some_and(|u| u != pod.metadata.uid) {
            continue;
        }
        let hit = pod
            .status
            .container_statuses
            .iter()
            .chain(&pod.status.init_container_statuses)
            .find(|c| c.bare_id() == container_id);
        if let Some(container) = hit {
            if found.is_some() {
                return Err(format!("two pods contain container {container_id}"));
            }
            found = Some(Found { pod, container });
        }
    }
    Ok(found)
}

/// The `k8s:` selectors of a found container.
pub fn selectors(f: &Found<'_>) -> Vec<Selector> {
    let p = f.pod;
    let s = |v: String| Selector::new("k8s", v);
    let mut out = vec![
        s(format!("ns:{}", p.metadata.namespace)),
        s(format!("sa:{}", p.spec.service_account_name)),
        s(format!("pod-name:{}", p.metadata.name)),
        s(format!("pod-uid:{}", p.metadata.uid)),
        s(format!("container-name:{}", f.container.name)),
    ];
    if !p.spec.node_name.is_empty() {
        out.push(s(format!("node-name:{}", p.spec.node_name)));
    }
    for (k, v) in &p.metadata.labels {
        out.push(s(format!("pod-label:{k}:{v}")));
    }
    for image in [&f.container.image, &f.container.image_id] {
        if !image.is_empty() {
            out.push(s(format!("container-image:{image}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PODS: &str = r#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[
      {"metadata":{"name":"api-7d9f","namespace":"payments","uid":"9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                   "labels":{"app":"api","tier":"backend"}},
       "spec":{"serviceAccountName":"api","nodeName":"node-1","containers":[{"name":"app","image":"ghcr.io/x/api:1"}]},
       "status":{"phase":"Running","containerStatuses":[{"name":"app","image":"ghcr.io/x/api:1",
          "imageID":"ghcr.io/x/api@sha256:abcd","containerID":"containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
          "ready":true,"restartCount":0}]}},
      {"metadata":{"name":"other","namespace":"default","uid":"11111111-2222-3333-4444-555555555555"},
       "spec":{"serviceAccountName":"default"},
       "status":{"initContainerStatuses":[{"name":"init","image":"busybox","containerID":"cri-o://ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"}]}}]}"#;

    #[test]
    fn container_is_found_and_selectors_are_complete() {
        let list: PodList = serde_json::from_str(PODS).unwrap();
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let f = find(&list, Some("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"), id)
            .unwrap()
            .unwrap();
        let sel: Vec<String> = selectors(&f).iter().map(|s| s.value.clone()).collect();
        for want in [
            "ns:payments",
            "sa:api",
            "pod-name:api-7d9f",
            "pod-uid:9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
            "pod-label:app:api",
            "pod-label:tier:backend",
            "container-name:app",
            "container-image:ghcr.io/x/api:1",
            "container-image:ghcr.io/x/api@sha256:abcd",
            "node-name:node-1",
        ] {
            assert!(sel.contains(&want.to_string()), "missing {want} in {sel:?}");
        }
        // Wrong pod UID: not found. Init containers are searched too.
        assert!(
            find(&list, Some("00000000-0000-0000-0000-000000000000"), id)
                .unwrap()
                .is_none()
        );
        let init = find(&list, None, &"f".repeat(64)).unwrap().unwrap();
        assert_eq!(init.container.name, "init");
    }

    #[test]
    fn a_container_in_two_pods_is_an_error() {
        let dup = PODS.replace(
            "cri-o://ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "containerd://0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        );
        let list: PodList = serde_json::from_str(&dup).unwrap();
        assert!(find(
            &list,
            None,
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        )
        .is_err());
    }
}
