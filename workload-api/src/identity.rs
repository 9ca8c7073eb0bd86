//! Which identities a caller gets: the entries whose selectors it matches, or, when none
//! does and Kubernetes default identities are on, `spiffe://<td>/ns/<ns>/sa/<sa>`.

use crate::attestor::Selector;
use crate::cache::{CachedEntry, Snapshot};

/// A caller's identities in one snapshot.
pub enum Identities<'a> {
    /// Matching registration entries, oldest first (the first is the default SVID).
    Entries(Vec<&'a CachedEntry>),
    /// The pod's default identity (no entry matched).
    Default(&'a str),
    /// Nothing: PermissionDenied "no identity issued".
    None,
}

/// The caller's identities. `default_id` is its pod default ID, if it may have one; a
/// default ID that core refused for this node is no identity.
pub fn resolve<'a>(
    snap: &'a Snapshot,
    caller: &[Selector],
    default_id: Option<&'a str>,
) -> Identities<'a> {
    let entries = snap.matching(caller);
    if !entries.is_empty() {
        return Identities::Entries(entries);
    }
    match default_id {
        Some(id) if !snap.refused_defaults.contains(id) => Identities::Default(id),
        _ => Identities::None,
    }
}

/// The default SPIFFE ID of a pod caller: needs exactly one `k8s:ns:` and one `k8s:sa:`.
pub fn default_id(trust_domain: &str, caller: &[Selector]) -> Option<String> {
    let one = |prefix: &str| {
        let mut it = caller
            .iter()
            .filter(|s| s.kind == "k8s")
            .filter_map(|s| s.value.strip_prefix(prefix));
        match (it.next(), it.next()) {
            (Some(v), None) if !v.is_empty() => Some(v.to_string()),
            _ => None,
        }
    };
    let ns = one("ns:")?;
    let sa = one("sa:")?;
    Some(format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))
}

/// A syntactically valid SPIFFE ID (scheme, trust domain name, optional path).
pub fn is_spiffe_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return false;
    };
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let td_ok = !td.is_empty()
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    let path_ok = path.is_empty()
        || path.split('/').skip(1).all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        });
    td_ok && path_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k8s(v: &str) -> Selector {
        Selector::new("k8s", v)
    }

    #[test]
    fn default_id_needs_one_namespace_and_one_account() {
        let sel = vec![k8s("ns:payments"), k8s("sa:api"), k8s("pod-name:x")];
        assert_eq!(
            default_id("example.org", &sel).as_deref(),
            Some("spiffe://example.org/ns/payments/sa/api")
        );
        assert_eq!(default_id("example.org", &[k8s("ns:a")]), None);
        assert_eq!(
            default_id("example.org", &[k8s("ns:a"), k8s("ns:b"), k8s("sa:c")]),
            None
        );
        assert_eq!(
            default_id("example.org", &[Selector::new("unix", "ns:a"), k8s("sa:c")]),
            None
        );
    }

    #[test]
    fn entries_win_over_the_default_and_refusals_count_as_nothing() {
        let mut snap = Snapshot::default();
        let caller = vec![k8s("ns:a"), k8s("sa:b")];
        assert!(matches!(
            resolve(&snap, &caller, Some("spiffe://t/ns/a/sa/b")),
            Identities::Default(_)
        ));
        snap.refused_defaults.insert("spiffe://t/ns/a/sa/b".into());
        assert!(matches!(
            resolve(&snap, &caller, Some("spiffe://t/ns/a/sa/b")),
            Identities::None
        ));
        snap.entries.push(CachedEntry {
            id: "e".into(),
            spiffe_id: "spiffe://t/x".into(),
            selectors: vec![k8s("ns:a")],
            hint: String::new(),
        });
        assert!(matches!(
            resolve(&snap, &caller, Some("spiffe://t/ns/a/sa/b")),
            Identities::Entries(_)
        ));
    }

    #[test]
    fn spiffe_id_syntax() {
        assert!(is_spiffe_id("spiffe://example.org/a/b"));
        assert!(is_spiffe_id("spiffe://example.org"));
        assert!(!is_spiffe_id("spiffe://Example.org/a"));
        assert!(!is_spiffe_id("spiffe://example.org/a//b"));
        assert!(!is_spiffe_id("https://example.org/a"));
        assert!(!is_spiffe_id("spiffe://example.org/../a"));
    }
}
