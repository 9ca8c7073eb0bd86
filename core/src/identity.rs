//! SPIFFE ID checks shared by every API that accepts an ID from outside.

use spiffe::SpiffeId;

/// Parses `id` and requires it to be a workload or node ID in `trust_domain`: the SPIFFE
/// scheme, the right trust domain, and a non-root path (X.509-SVID standard).
pub fn member_id(id: &str, trust_domain: &str) -> Result<SpiffeId, String> {
    let parsed = SpiffeId::new(id).map_err(|e| format!("{id:?} is not a SPIFFE ID: {e}"))?;
    if parsed.trust_domain_name() != trust_domain {
        return Err(format!("{id:?} is not in trust domain {trust_domain:?}"));
    }
    if parsed.path().is_empty() {
        return Err(format!(
            "{id:?} has no path; workload and node IDs need one"
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::member_id;

    #[test]
    fn accepts_ids_in_domain_with_a_path() {
        assert!(member_id("spiffe://example.org/ns/a/sa/b", "example.org").is_ok());
    }

    #[test]
    fn refuses_other_domains_root_ids_and_garbage() {
        assert!(member_id("spiffe://other.org/x", "example.org").is_err());
        assert!(member_id("spiffe://example.org", "example.org").is_err());
        assert!(member_id("https://example.org/x", "example.org").is_err());
        assert!(member_id("", "example.org").is_err());
    }
}
