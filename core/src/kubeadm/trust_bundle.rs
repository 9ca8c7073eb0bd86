//! KeyGrid's trust bundle as a Kubernetes `ClusterTrustBundle`
//! (`certificates.k8s.io/v1beta1`, KEP-3257).
//!
//! Pods that must trust KeyGrid-issued certificates (node, kubelet and control-plane
//! certificates, or SVIDs checked by a non-SPIFFE client) can then mount the roots with a
//! `clusterTrustBundle` projected volume instead of copying `bundle.pem` into every
//! ConfigMap. The object carries only the roots in KeyGrid's published bundle (both during a
//! root rotation), never an issuing CA: relying parties anchor at the root.
//!
//! Naming follows the API's rule: with a signer name, the object's name must start with
//! the signer name, `/` replaced by `:`, then `:`.

use serde_json::{json, Value};

/// The API version written; the kind is beta (feature gate `ClusterTrustBundle`) in
/// Kubernetes 1.33–1.36.
pub const API_VERSION: &str = "certificates.k8s.io/v1beta1";

/// Builds the object. `name` is the part after any signer prefix; `signer_name` is
/// `<domain>/<path>` or `None` for a bundle not tied to a signer; `roots` are DER.
pub fn cluster_trust_bundle(
    name: &str,
    signer_name: Option<&str>,
    roots: &[Vec<u8>],
) -> Result<Value, String> {
    if roots.is_empty() {
        return Err("the published bundle holds no root".into());
    }
    check_dns_subdomain(name, "--name")?;
    let full_name = match signer_name {
        None => name.to_string(),
        Some(signer) => {
            check_signer_name(signer)?;
            format!("{}:{name}", signer.replace('/', ":"))
        }
    };
    if full_name.len() > 253 {
        return Err(format!(
            "the object name {full_name:?} is longer than 253 characters"
        ));
    }
    let trust_bundle: String = roots
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
        .collect();
    let mut spec = json!({ "trustBundle": trust_bundle });
    if let Some(signer) = signer_name {
        spec["signerName"] = json!(signer);
    }
    Ok(json!({
        "apiVersion": API_VERSION,
        "kind": "ClusterTrustBundle",
        "metadata": {
            "name": full_name,
            "labels": { "app.kubernetes.io/managed-by": "keygrid" },
        },
        "spec": spec,
    }))
}

/// RFC 1123 subdomain: what Kubernetes accepts as an object name.
fn check_dns_subdomain(s: &str, what: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
        return Err(format!(
            "{what} {s:?} must be a lowercase RFC 1123 subdomain (a-z, 0-9, '-', '.')"
        ));
    }
    Ok(())
}

/// `<domain>/<path>`: a DNS subdomain, then a path of the same characters.
fn check_signer_name(s: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "--signer-name {s:?} must be <domain>/<path>, e.g. keygrid.example.com/nodes, in \
             lowercase letters, digits, '-' and '.'"
        )
    };
    let (domain, path) = s.split_once('/').ok_or_else(bad)?;
    check_dns_subdomain(domain, "the signer name's domain").map_err(|_| bad())?;
    if path.is_empty()
        || !path
            .split('/')
            .all(|seg| check_dns_subdomain(seg, "a signer path segment").is_ok())
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn the_name_carries_the_signer_prefix_and_the_bundle_every_root() {
        let (a, b) = (root(), root());
        let v = cluster_trust_bundle(
            "roots",
            Some("keygrid.example.com/nodes"),
            &[a.clone(), b.clone()],
        )
        .unwrap();
        assert_eq!(v["kind"], "ClusterTrustBundle");
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["metadata"]["name"], "keygrid.example.com:nodes:roots");
        assert_eq!(v["spec"]["signerName"], "keygrid.example.com/nodes");
        let pems = pem::parse_many(v["spec"]["trustBundle"].as_str().unwrap()).unwrap();
        let ders: Vec<Vec<u8>> = pems.iter().map(|p| p.contents().to_vec()).collect();
        assert_eq!(ders, vec![a, b]);

        let plain = cluster_trust_bundle("keygrid-roots", None, &[root()]).unwrap();
        assert_eq!(plain["metadata"]["name"], "keygrid-roots");
        assert!(plain["spec"].get("signerName").is_none());
    }

    #[test]
    fn bad_names_and_an_empty_bundle_are_refused_with_the_reason() {
        let r = [root()];
        for (name, signer, why) in [
            ("Roots", None, "--name"),
            ("roots_", None, "--name"),
            ("", None, "--name"),
            ("roots", Some("no-slash"), "--signer-name"),
            ("roots", Some("Keygrid.example/nodes"), "--signer-name"),
            ("roots", Some("keygrid.example/"), "--signer-name"),
        ] {
            let err = cluster_trust_bundle(name, signer, &r).unwrap_err();
            assert!(err.contains(why), "{name} {signer:?}: {err}");
        }
        let err = cluster_trust_bundle("roots", None, &[]).unwrap_err();
        assert!(err.contains("no root"), "{err}");
    }
}
