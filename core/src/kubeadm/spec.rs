//! What kubeadm expects: the certificate set of a control-plane node, derived from the
//! cluster's names exactly as kubeadm derives them (research note kubernetes-pki.md §1.2,
//! §1.3), from flags or a kubeadm configuration file.

use std::net::IpAddr;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

/// The names a control-plane node's certificates are derived from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The node's name (kubeadm `nodeRegistration.name`): etcd CN, first apiserver DNS SAN.
    pub node_name: String,
    /// `localAPIEndpoint.advertiseAddress`.
    pub advertise_address: IpAddr,
    /// `localAPIEndpoint.bindPort`.
    pub bind_port: u16,
    /// `networking.serviceSubnet` (first address goes into the apiserver certificate).
    pub service_cidr: (IpAddr, u8),
    /// `networking.dnsDomain`.
    pub dns_domain: String,
    /// `controlPlaneEndpoint` (host or host:port), if any.
    pub control_plane_endpoint: Option<String>,
    /// `apiServer.certSANs`.
    pub apiserver_sans: Vec<String>,
    /// `etcd.local.serverCertSANs`.
    pub etcd_server_sans: Vec<String>,
    /// `etcd.local.peerCertSANs`.
    pub etcd_peer_sans: Vec<String>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            node_name: String::new(),
            advertise_address: IpAddr::from([127, 0, 0, 1]),
            bind_port: 6443,
            service_cidr: (IpAddr::from([10, 96, 0, 0]), 12),
            dns_domain: "cluster.local".into(),
            control_plane_endpoint: None,
            apiserver_sans: vec![],
            etcd_server_sans: vec![],
            etcd_peer_sans: vec![],
        }
    }
}

/// Which CA signs a certificate, as kubeadm names its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeCa {
    /// `ca.crt` (KeyGrid issuer `control-plane`).
    Cluster,
    /// `front-proxy-ca.crt` (KeyGrid issuer `front-proxy`).
    FrontProxy,
    /// `etcd/ca.crt` (KeyGrid issuer `etcd`).
    Etcd,
}

impl KubeCa {
    /// The CA certificate's path relative to the pki directory.
    pub fn file(self) -> &'static str {
        match self {
            KubeCa::Cluster => "ca.crt",
            KubeCa::FrontProxy => "front-proxy-ca.crt",
            KubeCa::Etcd => "etcd/ca.crt",
        }
    }
}

/// One certificate of the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSpec {
    /// Base path relative to the pki directory (`apiserver`, `etcd/server`, ...); the files
    /// are `<base>.crt` and `<base>.key`.
    pub base: String,
    /// KeyGrid profile.
    pub profile: &'static str,
    /// The signing CA.
    pub ca: KubeCa,
    /// Subject CN.
    pub common_name: String,
    /// Subject O.
    pub organizations: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// For kubeconfig credentials: the kubeconfig file name (`admin.conf`), user name and
    /// whether it talks to the local endpoint rather than controlPlaneEndpoint.
    pub kubeconfig: Option<KubeconfigSpec>,
}

/// A kubeconfig that references a client certificate of the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeconfigSpec {
    /// File name in the kubeconfig directory.
    pub file: &'static str,
    /// API server URL.
    pub server: String,
}

/// Every certificate kubeadm's external-CA mode needs on a control-plane node, in
/// kubeadm's order: `GetDefaultCertList()` then the kubeconfigs.
pub fn certificate_set(s: &ClusterSpec) -> Result<Vec<CertSpec>, String> {
    let mut api_dns = vec![
        s.node_name.clone(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{}", s.dns_domain),
    ];
    let mut api_ips = vec![first_ip(s.service_cidr)?, s.advertise_address];
    if let Some(host) = s.control_plane_endpoint.as_deref().map(endpoint_host) {
        add_san(&host, &mut api_dns, &mut api_ips);
    }
    for san in &s.apiserver_sans {
        add_san(san, &mut api_dns, &mut api_ips);
    }
    let etcd_names = |extra: &[String]| {
        let mut dns = vec![s.node_name.clone(), "localhost".to_string()];
        let mut ips = vec![
            s.advertise_address,
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ];
        for san in extra {
            add_san(san, &mut dns, &mut ips);
        }
        (dedup(dns), dedup(ips))
    };
    let (server_dns, server_ips) = etcd_names(&s.etcd_server_sans);
    let (peer_dns, peer_ips) = etcd_names(&s.etcd_peer_sans);
    let client = |base: &str, profile: &'static str, ca: KubeCa, cn: &str| CertSpec {
        base: base.into(),
        profile,
        ca,
        common_name: cn.into(),
        organizations: vec![],
        dns_names: vec![],
        ips: vec![],
        kubeconfig: None,
    };
    let local = format!(
        "https://{}",
        join_host_port(&s.advertise_address.to_string(), s.bind_port)
    );
    let cluster_url = match &s.control_plane_endpoint {
        Some(e)
            if e.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                && !e.ends_with(']') =>
        {
            format!("https://{e}")
        }
        Some(e) => format!(
            "https://{}",
            join_host_port(e.trim_matches(['[', ']']), s.bind_port)
        ),
        None => local.clone(),
    };
    let kubeconfig = |base: &str,
                      profile: &'static str,
                      cn: &str,
                      o: &[&str],
                      file: &'static str,
                      server: &str| {
        CertSpec {
            organizations: o.iter().map(|x| x.to_string()).collect(),
            kubeconfig: Some(KubeconfigSpec {
                file,
                server: server.to_string(),
            }),
            ..client(base, profile, KubeCa::Cluster, cn)
        }
    };
    Ok(vec![
        CertSpec {
            dns_names: dedup(api_dns),
            ips: dedup(api_ips),
            ..client(
                "apiserver",
                "kube-apiserver",
                KubeCa::Cluster,
                "kube-apiserver",
            )
        },
        client(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            KubeCa::Cluster,
            "kube-apiserver-kubelet-client",
        ),
        client(
            "front-proxy-client",
            "front-proxy-client",
            KubeCa::FrontProxy,
            "front-proxy-client",
        ),
        CertSpec {
            dns_names: server_dns,
            ips: server_ips,
            ..client("etcd/server", "etcd-server", KubeCa::Etcd, &s.node_name)
        },
        CertSpec {
            dns_names: peer_dns,
            ips: peer_ips,
            ..client("etcd/peer", "etcd-peer", KubeCa::Etcd, &s.node_name)
        },
        client(
            "etcd/healthcheck-client",
            "etcd-healthcheck-client",
            KubeCa::Etcd,
            "kube-etcd-healthcheck-client",
        ),
        client(
            "apiserver-etcd-client",
            "kube-apiserver-etcd-client",
            KubeCa::Etcd,
            "kube-apiserver-etcd-client",
        ),
        kubeconfig(
            "kubeconfig/admin",
            "kubeconfig-admin",
            "kubernetes-admin",
            &["kubeadm:cluster-admins"],
            "admin.conf",
            &cluster_url,
        ),
        kubeconfig(
            "kubeconfig/super-admin",
            "kubeconfig-super-admin",
            "kubernetes-super-admin",
            &["system:masters"],
            "super-admin.conf",
            &cluster_url,
        ),
        kubeconfig(
            "kubeconfig/controller-manager",
            "kubeconfig-controller-manager",
            "system:kube-controller-manager",
            &[],
            "controller-manager.conf",
            &local,
        ),
        kubeconfig(
            "kubeconfig/scheduler",
            "kubeconfig-scheduler",
            "system:kube-scheduler",
            &[],
            "scheduler.conf",
            &local,
        ),
        // kubeadm's external-CA mode requires kubelet.conf on the init node, signed by the
        // cluster CA, pointing at controlPlaneEndpoint.
        kubeconfig(
            "kubeconfig/kubelet",
            "kubeconfig-kubelet",
            &format!("system:node:{}", s.node_name),
            &["system:nodes"],
            "kubelet.conf",
            &cluster_url,
        ),
    ])
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host part of `host`, `host:port` or `[v6]:port`.
fn endpoint_host(e: &str) -> String {
    if let Some(rest) = e.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_string();
    }
    if e.parse::<IpAddr>().is_ok() {
        return e.to_string();
    }
    e.rsplit_once(':').map_or(e, |(h, _)| h).to_string()
}

/// kubeadm's rule: an IP goes to the IP SANs, an RFC 1123 name to the DNS SANs, anything
/// else is dropped (with a warning).
fn add_san(san: &str, dns: &mut Vec<String>, ips: &mut Vec<IpAddr>) {
    if let Ok(ip) = san.parse::<IpAddr>() {
        ips.push(ip);
    } else if is_dns_name(san) {
        dns.push(san.to_string());
    } else {
        tracing::warn!(
            san,
            "dropping a SAN that is neither an IP address nor a DNS name"
        );
    }
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn dedup<T: PartialEq + Clone>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// The first usable address of the service network (kubeadm's `GetAPIServerVirtualIP`).
pub fn first_ip((net, prefix): (IpAddr, u8)) -> Result<IpAddr, String> {
    match net {
        IpAddr::V4(v) => {
            let host_bits = 32u32.saturating_sub(u32::from(prefix));
            let mask = if host_bits >= 32 {
                0
            } else {
                u32::MAX << host_bits
            };
            Ok(IpAddr::from(((u32::from(v) & mask) + 1).to_be_bytes()))
        }
        IpAddr::V6(v) => {
            let host_bits = 128u32.saturating_sub(u32::from(prefix));
            let mask = if host_bits >= 128 {
                0
            } else {
                u128::MAX << host_bits
            };
            Ok(IpAddr::from(((u128::from(v) & mask) + 1).to_be_bytes()))
        }
    }
}

/// The parts of kubeadm's `InitConfiguration` / `ClusterConfiguration` documents that
/// decide certificate names. Unknown fields are ignored: these files carry much more.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubeadmDoc {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    control_plane_endpoint: Option<String>,
    #[serde(default)]
    networking: Option<Networking>,
    #[serde(default)]
    api_server: Option<ApiServer>,
    #[serde(default)]
    etcd: Option<Etcd>,
    #[serde(default, rename = "localAPIEndpoint")]
    local_api_endpoint: Option<LocalApiEndpoint>,
    #[serde(default)]
    node_registration: Option<NodeRegistration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Networking {
    service_subnet: Option<String>,
    dns_domain: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ApiServer {
    #[serde(default, rename = "certSANs")]
    cert_sans: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Etcd {
    local: Option<EtcdLocal>,
}

#[derive(Debug, Default, Deserialize)]
struct EtcdLocal {
    #[serde(default, rename = "serverCertSANs")]
    server_cert_sans: Vec<String>,
    #[serde(default, rename = "peerCertSANs")]
    peer_cert_sans: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LocalApiEndpoint {
    advertise_address: Option<String>,
    bind_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
struct NodeRegistration {
    name: Option<String>,
}

/// Applies a kubeadm configuration file (one or more YAML documents) to `spec`.
pub fn apply_kubeadm_config(spec: &mut ClusterSpec, path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read kubeadm configuration {}", path.display()))?;
    apply_kubeadm_yaml(spec, &text).with_context(|| format!("{}", path.display()))
}

/// Applies the text of a kubeadm configuration (see [`apply_kubeadm_config`]).
pub fn apply_kubeadm_yaml(spec: &mut ClusterSpec, text: &str) -> anyhow::Result<()> {
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let d = KubeadmDoc::deserialize(doc).context("not a kubeadm configuration document")?;
        match d.kind.as_str() {
            "ClusterConfiguration" => {
                if let Some(e) = d.control_plane_endpoint.filter(|e| !e.is_empty()) {
                    spec.control_plane_endpoint = Some(e);
                }
                if let Some(n) = d.networking {
                    if let Some(cidr) = n.service_subnet {
                        // Dual-stack lists "v4,v6"; kubeadm takes the first family's VIP.
                        let first = cidr.split(',').next().unwrap_or_default().trim();
                        spec.service_cidr = crate::config::parse_cidr(first)
                            .map_err(|e| anyhow::anyhow!("networking.serviceSubnet: {e}"))?;
                    }
                    if let Some(d) = n.dns_domain {
                        spec.dns_domain = d;
                    }
                }
                if let Some(a) = d.api_server {
                    spec.apiserver_sans.extend(a.cert_sans);
                }
                if let Some(l) = d.etcd.and_then(|e| e.local) {
                    spec.etcd_server_sans.extend(l.server_cert_sans);
                    spec.etcd_peer_sans.extend(l.peer_cert_sans);
                }
            }
            "InitConfiguration" | "JoinConfiguration" => {
                if let Some(l) = d.local_api_endpoint {
                    if let Some(a) = l.advertise_address.filter(|a| !a.is_empty()) {
                        spec.advertise_address = a.parse().map_err(|_| {
                            anyhow::anyhow!(
                                "localAPIEndpoint.advertiseAddress {a:?} is not an IP address"
                            )
                        })?;
                    }
                    if let Some(p) = l.bind_port.filter(|p| *p != 0) {
                        spec.bind_port = p;
                    }
                }
                if let Some(n) = d.node_registration.and_then(|n| n.name) {
                    spec.node_name = n;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_names_follow_kubeadm() {
        let mut s = ClusterSpec {
            node_name: "cp1".into(),
            advertise_address: "10.0.0.5".parse().unwrap(),
            ..Default::default()
        };
        apply_kubeadm_yaml(
            &mut s,
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n  advertiseAddress: 10.0.0.6\nnodeRegistration:\n  name: cp2\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncontrolPlaneEndpoint: api.example.internal:6443\nnetworking:\n  serviceSubnet: 10.100.0.0/16\n  dnsDomain: corp.local\napiServer:\n  certSANs: [\"1.2.3.4\", \"extra.example.internal\", \"not a name\"]\netcd:\n  local:\n    serverCertSANs: [etcd.example.internal]\n",
        )
        .unwrap();
        let set = certificate_set(&s).unwrap();
        let api = &set[0];
        assert_eq!(
            api.dns_names,
            vec![
                "cp2",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.corp.local",
                "api.example.internal",
                "extra.example.internal"
            ]
        );
        let ips: Vec<String> = api.ips.iter().map(|i| i.to_string()).collect();
        assert_eq!(ips, vec!["10.100.0.1", "10.0.0.6", "1.2.3.4"]);
        let etcd = set.iter().find(|c| c.base == "etcd/server").unwrap();
        assert_eq!(etcd.common_name, "cp2");
        assert_eq!(
            etcd.dns_names,
            vec!["cp2", "localhost", "etcd.example.internal"]
        );
        let admin = set.iter().find(|c| c.base == "kubeconfig/admin").unwrap();
        assert_eq!(
            admin.kubeconfig.as_ref().unwrap().server,
            "https://api.example.internal:6443"
        );
        let cm = set
            .iter()
            .find(|c| c.base == "kubeconfig/controller-manager")
            .unwrap();
        assert_eq!(
            cm.kubeconfig.as_ref().unwrap().server,
            "https://10.0.0.6:6443"
        );
    }

    #[test]
    fn first_service_ip() {
        assert_eq!(
            first_ip(("10.96.0.0".parse().unwrap(), 12))
                .unwrap()
                .to_string(),
            "10.96.0.1"
        );
        assert_eq!(
            first_ip(("fd00::".parse().unwrap(), 108))
                .unwrap()
                .to_string(),
            "fd00::1"
        );
    }

    #[test]
    fn bad_yaml_is_an_error() {
        let mut s = ClusterSpec::default();
        assert!(apply_kubeadm_yaml(
            &mut s,
            "kind: ClusterConfiguration\nnetworking:\n  serviceSubnet: nope\n"
        )
        .is_err());
        assert!(apply_kubeadm_yaml(&mut s, "kind: [unclosed\n").is_err());
    }
}
