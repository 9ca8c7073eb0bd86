//! The policy engine: fleet-wide rules every issuance path consults before signing.
//!
//! Rules come from the `[[policy]]` tables of core's configuration. Each names the
//! profiles it governs (`*` for all) and may limit key algorithms and sizes, lifetime,
//! SPIFFE ID paths, DNS names, IP ranges and the attestation kind. Every rule that matches
//! a request must allow it; a refusal names the rule and the reason, and nothing is
//! signed. A lifetime above a rule's maximum is not refused but cut, and the decision says
//! so.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// The key a CSR carries, as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// `ecdsa-p256`, `ecdsa-p384`, `ecdsa-p521`, `ed25519`, `rsa` or `unknown`.
    pub kind: String,
    /// Key size in bits (RSA modulus, curve size).
    pub bits: u32,
}

impl KeyInfo {
    /// The name policy rules use: `rsa-2048`, `ecdsa-p384`, ...
    pub fn name(&self) -> String {
        if self.kind == "rsa" {
            format!("rsa-{}", self.bits)
        } else {
            self.kind.clone()
        }
    }
}

/// Reads the public key of a DER PKCS#10 request (its signature is checked elsewhere).
pub fn csr_key_info(csr_der: &[u8]) -> Result<KeyInfo, String> {
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| format!("csr does not parse: {e}"))?;
    let spki = &csr.certification_request_info.subject_pki;
    let oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let info = match (oid.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => KeyInfo {
            kind: "ecdsa-p256".into(),
            bits: 256,
        },
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => KeyInfo {
            kind: "ecdsa-p384".into(),
            bits: 384,
        },
        ("1.2.840.10045.2.1", Some("1.3.132.0.35")) => KeyInfo {
            kind: "ecdsa-p521".into(),
            bits: 521,
        },
        ("1.3.101.112", _) => KeyInfo {
            kind: "ed25519".into(),
            bits: 256,
        },
        ("1.2.840.113549.1.1.1", _) => match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => KeyInfo {
                kind: "rsa".into(),
                bits: rsa.key_size() as u32,
            },
            _ => return Err("csr carries a malformed RSA key".into()),
        },
        _ => KeyInfo {
            kind: "unknown".into(),
            bits: 0,
        },
    };
    Ok(info)
}

/// One `[[policy]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Name shown in refusals; defaults to `policy[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Profiles this rule governs (`x509-svid`, `node`, `spire-intermediate`, ...; `*` = all).
    pub profiles: Vec<String>,
    /// Allowed key types: `ecdsa-p256`, `ecdsa-p384`, `ecdsa-p521`, `ed25519`, `rsa`.
    #[serde(default)]
    pub allowed_keys: Option<Vec<String>>,
    /// Minimum RSA modulus size in bits.
    #[serde(default)]
    pub min_rsa_bits: Option<u32>,
    /// Longest lifetime; longer requests are cut to it.
    #[serde(default, with = "humantime_serde::option")]
    pub max_ttl: Option<Duration>,
    /// Allowed SPIFFE ID paths: exact (`/web`), prefix (`/ns/prod/*` one segment,
    /// `/ns/**` any depth).
    #[serde(default)]
    pub spiffe_id_paths: Option<Vec<String>>,
    /// Allowed DNS names: exact or `*.suffix` (one label).
    #[serde(default)]
    pub dns_names: Option<Vec<String>>,
    /// Allowed IP ranges, CIDR.
    #[serde(default)]
    pub ip_ranges: Option<Vec<String>>,
    /// Attestation kinds the requester must have used (`join_token`, `tpm`, `admin`).
    #[serde(default)]
    pub attestation: Option<Vec<String>>,
}

/// Known key type names, for validating configuration.
const KEY_KINDS: [&str; 5] = ["ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519", "rsa"];

/// What is being asked for, as policy sees it.
#[derive(Clone, Debug, Default)]
pub struct PolicyRequest {
    /// Profile name.
    pub profile: String,
    /// The key to be certified.
    pub key: Option<KeyInfo>,
    /// Requested lifetime.
    pub ttl: Duration,
    /// The SPIFFE ID, if any.
    pub spiffe_id: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// How the requester attested (`join_token`, `tpm`, `admin`).
    pub attestation: String,
}

/// The outcome of a policy check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with the lifetime to use (possibly cut) and notes to log.
    Allow {
        /// Lifetime after every rule's maximum.
        ttl: Duration,
        /// Explanations, e.g. "ttl cut from 2h to 1h by rule workload-keys".
        notes: Vec<String>,
    },
    /// Refused by `rule` because of `reason`.
    Refuse {
        /// The refusing rule's name.
        rule: String,
        /// Why, in words an operator can act on.
        reason: String,
    },
}

/// A rule ready to evaluate: its display name, the rule, and its parsed IP ranges.
type CompiledRule = (String, PolicyRule, Vec<(IpAddr, u8)>);

/// The compiled policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<CompiledRule>,
}

fn path_matches(pattern: &str, path: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix("/**") {
        return path.starts_with(&format!("{prefix}/")) && path.len() > prefix.len() + 1;
    }
    if let Some(prefix) = pattern.strip_suffix("/*") {
        return path
            .strip_prefix(&format!("{prefix}/"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
    }
    pattern == path
}

fn dns_matches(pattern: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(&format!(".{suffix}"))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == name,
    }
}

fn ip_in(ip: &IpAddr, (net, prefix): &(IpAddr, u8)) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if *prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(*prefix))
            };
            (u32::from(*a) & mask) == (u32::from(*n) & mask)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if *prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(*prefix))
            };
            (u128::from(*a) & mask) == (u128::from(*n) & mask)
        }
        _ => false,
    }
}

impl Policy {
    /// Validates and compiles rules; errors name the rule (`policy[i]`) and the field.
    pub fn new(rules: Vec<PolicyRule>) -> Result<Self, String> {
        let mut compiled = Vec::new();
        for (i, rule) in rules.into_iter().enumerate() {
            let name = rule.name.clone().unwrap_or_else(|| format!("policy[{i}]"));
            // Errors always carry the index so configuration errors can point at the table.
            let label = match &rule.name {
                Some(n) => format!("policy[{i}] ({n})"),
                None => format!("policy[{i}]"),
            };
            let name_for_errors = &label;
            if rule.profiles.is_empty() {
                return Err(format!(
                    "{name_for_errors}: profiles must name at least one profile (or \"*\")"
                ));
            }
            for p in &rule.profiles {
                if p != "*" && crate::ca::profiles::profile(p).is_none() {
                    return Err(format!(
                        "{name}: unknown profile {p:?}; profiles are {}",
                        crate::ca::profiles::PROFILES
                            .iter()
                            .map(|p| p.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            for k in rule.allowed_keys.iter().flatten() {
                if !KEY_KINDS.contains(&k.as_str()) {
                    return Err(format!(
                        "{name_for_errors}: unknown key type {k:?}; use one of {}",
                        KEY_KINDS.join(", ")
                    ));
                }
            }
            for p in rule.spiffe_id_paths.iter().flatten() {
                if !p.starts_with('/') {
                    return Err(format!(
                        "{name_for_errors}: SPIFFE ID path {p:?} must start with /"
                    ));
                }
            }
            let mut ranges = Vec::new();
            for c in rule.ip_ranges.iter().flatten() {
                ranges.push(
                    crate::config::parse_cidr(c)
                        .map_err(|e| format!("{name_for_errors}: ip_ranges: {e}"))?,
                );
            }
            if rule.max_ttl.is_some_and(|t| t.is_zero()) {
                return Err(format!(
                    "{name_for_errors}: max_ttl must be greater than zero"
                ));
            }
            compiled.push((name, rule, ranges));
        }
        Ok(Policy { rules: compiled })
    }

    /// The key types every rule governing `profile` allows (the intersection), or `None`
    /// when no rule restricts keys. EST's `/csrattrs` tells clients this up front.
    pub fn allowed_keys(&self, profile: &str) -> Option<Vec<String>> {
        let mut allowed: Option<Vec<String>> = None;
        for (_, rule, _) in &self.rules {
            if !rule.profiles.iter().any(|p| p == "*" || p == profile) {
                continue;
            }
            if let Some(keys) = &rule.allowed_keys {
                allowed = Some(match allowed {
                    None => keys.clone(),
                    Some(prev) => prev.into_iter().filter(|k| keys.contains(k)).collect(),
                });
            }
        }
        allowed
    }

    /// Decides on a request. Every rule that governs the profile must allow it.
    pub fn check(&self, req: &PolicyRequest) -> Decision {
        let mut ttl = req.ttl;
        let mut notes = Vec::new();
        for (name, rule, ranges) in &self.rules {
            if !rule.profiles.iter().any(|p| p == "*" || *p == req.profile) {
                continue;
            }
            let refuse = |reason: String| Decision::Refuse {
                rule: name.clone(),
                reason,
            };
            if let Some(allowed) = &rule.allowed_keys {
                let key = match &req.key {
                    Some(k) => k,
                    None => return refuse("the request carries no key to check".into()),
                };
                if !allowed.contains(&key.kind) {
                    return refuse(format!(
                        "key type {} is not allowed (allowed: {})",
                        key.name(),
                        allowed.join(", ")
                    ));
                }
            }
            if let (Some(min), Some(key)) = (rule.min_rsa_bits, &req.key) {
                if key.kind == "rsa" && key.bits < min {
                    return refuse(format!(
                        "RSA key of {} bits is below the minimum of {min}",
                        key.bits
                    ));
                }
            }
            if let Some(paths) = &rule.spiffe_id_paths {
                let path = req
                    .spiffe_id
                    .as_deref()
                    .and_then(|id| spiffe::SpiffeId::new(id).ok())
                    .map(|id| id.path().to_string());
                match path {
                    Some(p) if paths.iter().any(|pat| path_matches(pat, &p)) => {}
                    Some(p) => {
                        return refuse(format!(
                            "SPIFFE ID path {p} is not allowed (allowed: {})",
                            paths.join(", ")
                        ))
                    }
                    None => return refuse("a SPIFFE ID is required".into()),
                }
            }
            if let Some(dns) = &rule.dns_names {
                if let Some(bad) = req
                    .dns_names
                    .iter()
                    .find(|n| !dns.iter().any(|pat| dns_matches(pat, n)))
                {
                    return refuse(format!(
                        "DNS name {bad} is not allowed (allowed: {})",
                        dns.join(", ")
                    ));
                }
            }
            if rule.ip_ranges.is_some() {
                if let Some(bad) = req
                    .ips
                    .iter()
                    .find(|ip| !ranges.iter().any(|r| ip_in(ip, r)))
                {
                    return refuse(format!("IP address {bad} is not in an allowed range"));
                }
            }
            if let Some(kinds) = &rule.attestation {
                if !kinds.contains(&req.attestation) {
                    return refuse(format!(
                        "attestation {:?} is not accepted (required: {})",
                        req.attestation,
                        kinds.join(", ")
                    ));
                }
            }
            if let Some(max) = rule.max_ttl {
                if ttl > max {
                    notes.push(format!(
                        "lifetime cut from {} to {} by rule {name}",
                        humantime::format_duration(ttl),
                        humantime::format_duration(max)
                    ));
                    ttl = max;
                }
            }
        }
        Decision::Allow { ttl, notes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> PolicyRule {
        toml::from_str(toml_text).unwrap()
    }

    fn key(kind: &str, bits: u32) -> Option<KeyInfo> {
        Some(KeyInfo {
            kind: kind.into(),
            bits,
        })
    }

    fn svid_request(id: &str, k: Option<KeyInfo>) -> PolicyRequest {
        PolicyRequest {
            profile: "x509-svid".into(),
            key: k,
            ttl: Duration::from_secs(300),
            spiffe_id: Some(id.into()),
            attestation: "join_token".into(),
            ..Default::default()
        }
    }

    #[test]
    fn p384_only_refuses_p256_and_rsa_naming_the_rule() {
        let p = Policy::new(vec![rule(
            "name = \"p384-only\"\nprofiles = [\"*\"]\nallowed_keys = [\"ecdsa-p384\"]\n",
        )])
        .unwrap();
        let d = p.check(&svid_request(
            "spiffe://example.org/a",
            key("ecdsa-p256", 256),
        ));
        assert!(
            matches!(&d, Decision::Refuse { rule, reason } if rule == "p384-only" && reason.contains("ecdsa-p256")),
            "{d:?}"
        );
        let d = p.check(&svid_request("spiffe://example.org/a", key("rsa", 2048)));
        assert!(
            matches!(&d, Decision::Refuse { reason, .. } if reason.contains("rsa-2048")),
            "{d:?}"
        );
        assert!(matches!(
            p.check(&svid_request(
                "spiffe://example.org/a",
                key("ecdsa-p384", 384)
            )),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn rsa_minimum_and_paths_and_ttl_clamp() {
        let p = Policy::new(vec![rule(
            "profiles = [\"x509-svid\"]\nmin_rsa_bits = 3072\nmax_ttl = \"1m\"\nspiffe_id_paths = [\"/ns/*/sa/*\", \"/dev/**\"]\n",
        )])
        .unwrap();
        let d = p.check(&svid_request(
            "spiffe://example.org/ns/a/sa/b",
            key("rsa", 2048),
        ));
        assert!(
            matches!(&d, Decision::Refuse { rule, reason } if rule == "policy[0]" && reason.contains("3072")),
            "{d:?}"
        );
        let d = p.check(&svid_request(
            "spiffe://example.org/other",
            key("rsa", 4096),
        ));
        assert!(
            matches!(&d, Decision::Refuse { reason, .. } if reason.contains("/other")),
            "{d:?}"
        );
        match p.check(&svid_request(
            "spiffe://example.org/dev/x/y",
            key("ecdsa-p256", 256),
        )) {
            Decision::Allow { ttl, notes } => {
                assert_eq!(ttl, Duration::from_secs(60));
                assert!(notes[0].contains("cut"), "{notes:?}");
            }
            d => panic!("{d:?}"),
        }
        // Rules for other profiles do not apply.
        let node = PolicyRequest {
            profile: "node".into(),
            key: key("rsa", 1024),
            ..Default::default()
        };
        assert!(matches!(p.check(&node), Decision::Allow { .. }));
    }

    #[test]
    fn names_ips_and_attestation() {
        let p = Policy::new(vec![rule(
            "profiles = [\"*\"]\ndns_names = [\"*.svc.cluster.local\", \"api.example.org\"]\nip_ranges = [\"10.0.0.0/8\"]\nattestation = [\"tpm\"]\n",
        )])
        .unwrap();
        let mut req = PolicyRequest {
            profile: "node".into(),
            attestation: "tpm".into(),
            ..Default::default()
        };
        req.dns_names = vec!["web.svc.cluster.local".into(), "api.example.org".into()];
        req.ips = vec!["10.1.2.3".parse().unwrap()];
        assert!(matches!(p.check(&req), Decision::Allow { .. }));
        req.dns_names.push("a.b.svc.cluster.local".into());
        assert!(matches!(p.check(&req), Decision::Refuse { .. }));
        req.dns_names.pop();
        req.ips.push("192.168.1.1".parse().unwrap());
        assert!(matches!(p.check(&req), Decision::Refuse { .. }));
        req.ips.pop();
        req.attestation = "join_token".into();
        assert!(
            matches!(p.check(&req), Decision::Refuse { reason, .. } if reason.contains("join_token"))
        );
    }

    #[test]
    fn bad_rules_are_refused_with_their_name() {
        for (text, want) in [
            ("profiles = []\n", "at least one profile"),
            ("profiles = [\"nope\"]\n", "unknown profile"),
            (
                "profiles = [\"*\"]\nallowed_keys = [\"rsa-1024\"]\n",
                "unknown key type",
            ),
            (
                "profiles = [\"*\"]\nspiffe_id_paths = [\"ns/a\"]\n",
                "must start with /",
            ),
            (
                "profiles = [\"*\"]\nip_ranges = [\"10.0.0.0/40\"]\n",
                "prefix",
            ),
        ] {
            let err = Policy::new(vec![rule(text)]).unwrap_err();
            assert!(
                err.contains("policy[0]") && err.contains(want),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn glob_semantics() {
        assert!(path_matches("/ns/*", "/ns/a"));
        assert!(!path_matches("/ns/*", "/ns/a/b"));
        assert!(!path_matches("/ns/*", "/ns/"));
        assert!(path_matches("/ns/**", "/ns/a/b"));
        assert!(!path_matches("/ns/**", "/nsx/a"));
        assert!(dns_matches("*.example.org", "A.example.org"));
        assert!(!dns_matches("*.example.org", "example.org"));
        assert!(!dns_matches("*.example.org", "a.b.example.org"));
    }

    #[test]
    fn csr_keys_are_identified() {
        for (alg, want) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, "ecdsa-p256"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "ecdsa-p384"),
            (&rcgen::PKCS_ED25519, "ed25519"),
        ] {
            let k = rcgen::KeyPair::generate_for(alg).unwrap();
            let csr = rcgen::CertificateParams::default()
                .serialize_request(&k)
                .unwrap();
            assert_eq!(csr_key_info(csr.der()).unwrap().kind, want);
        }
        assert!(csr_key_info(b"garbage").is_err());
    }
}
