//! Identity by default: a Kubernetes pod gets `spiffe://<td>/ns/<namespace>/sa/<account>`
//! without a registration entry.
//!
//! An agent that attested a pod asks core for that pod's default ID; core checks that the
//! ID has exactly this shape (valid Kubernetes names, the right trust domain) and that
//! default identities are enabled. Anything else an agent asks for without an entry is
//! outside its scope: refused and logged.

/// The longest Kubernetes namespace name (an RFC 1123 label).
const MAX_NAMESPACE: usize = 63;
/// The longest service account name (an RFC 1123 subdomain).
const MAX_SERVICE_ACCOUNT: usize = 253;

/// The default SPIFFE ID of a pod running as `service_account` in `namespace`.
pub fn pod_default_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// If `spiffe_id` is a well-formed default pod ID in `trust_domain`, its namespace and
/// service account.
pub fn parse_default_id<'a>(spiffe_id: &'a str, trust_domain: &str) -> Option<(&'a str, &'a str)> {
    let rest = spiffe_id
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix("/ns/")?;
    let (ns, sa) = rest.split_once("/sa/")?;
    if !is_dns_label(ns, MAX_NAMESPACE) || !is_dns_subdomain(sa, MAX_SERVICE_ACCOUNT) {
        return None;
    }
    Some((ns, sa))
}

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric.
fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels.
fn is_dns_subdomain(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.split('.').all(|l| is_dns_label(l, 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_round_trip() {
        let id = pod_default_id("example.org", "payments", "api-server");
        assert_eq!(id, "spiffe://example.org/ns/payments/sa/api-server");
        assert_eq!(
            parse_default_id(&id, "example.org"),
            Some(("payments", "api-server"))
        );
        assert_eq!(
            parse_default_id("spiffe://example.org/ns/a/sa/b.c", "example.org"),
            Some(("a", "b.c"))
        );
    }

    #[test]
    fn other_shapes_are_not_default_ids() {
        for id in [
            "spiffe://other.org/ns/a/sa/b",
            "spiffe://example.org.evil/ns/a/sa/b",
            "spiffe://example.org/ns/a/sa/b/extra",
            "spiffe://example.org/ns/A/sa/b",
            "spiffe://example.org/ns//sa/b",
            "spiffe://example.org/ns/a/sa/",
            "spiffe://example.org/admin",
            "spiffe://example.org/ns/-a/sa/b",
            "spiffe://example.org/ns/a/sa/b/../../admin",
        ] {
            assert_eq!(parse_default_id(id, "example.org"), None, "{id}");
        }
    }
}
