//! Federation: other trust domains' bundles, handed to agents with KeyGrid's own.
//!
//! Workloads that talk to services of a partner trust domain need that domain's roots (and
//! JWT keys) to authenticate them; the SPIFFE Workload API carries them as federated
//! bundles. Core reads each configured `[[federation]]` bundle from a file an operator (or a
//! bundle-endpoint sync job) keeps current, in the SPIFFE bundle format (a JWK Set whose
//! `x509-svid` keys carry the roots in `x5c` and whose `jwt-svid` keys are JWT keys) or as
//! PEM certificates. Files are re-read when they change; a file that becomes unreadable or
//! malformed keeps its last good contents (and says why in the log), so a bad edit never
//! empties a bundle that workloads rely on.
//!
//! Federation is trust-domain wide: every workload of this trust domain gets every
//! configured federated bundle. Per-entry `federates_with` is not offered.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use keygrid_proto::keygrid::v1 as pb;
use serde::Deserialize;

/// One `[[federation]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The other trust domain's name, e.g. `partner.example` (no scheme).
    pub trust_domain: String,
    /// Its bundle: SPIFFE bundle JSON (JWK Set) or PEM certificates.
    pub bundle_file: PathBuf,
}

/// A parsed federated bundle.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedBundle {
    /// DER root certificates.
    pub x509_authorities: Vec<Vec<u8>>,
    /// JWK Set JSON of the `jwt-svid` keys; empty when there are none.
    pub jwks: Vec<u8>,
}

/// Parses a bundle in the SPIFFE bundle format (RFC 7517 JWK Set with `use` members, SPIFFE
/// Trust Domain and Bundle spec §4) or as PEM certificates. Every certificate must parse;
/// a bundle with nothing in it is refused.
pub fn parse_bundle(text: &[u8]) -> Result<ParsedBundle, String> {
    let trimmed = text.trim_ascii_start();
    let parsed = if trimmed.starts_with(b"{") {
        parse_jwks(trimmed)?
    } else {
        let blocks = pem::parse_many(text).map_err(|e| format!("not PEM: {e}"))?;
        let mut x509_authorities = Vec::new();
        for b in blocks {
            if b.tag() != "CERTIFICATE" {
                return Err(format!("unexpected PEM block {:?}", b.tag()));
            }
            x509_authorities.push(b.into_contents());
        }
        ParsedBundle {
            x509_authorities,
            jwks: Vec::new(),
        }
    };
    for (i, der) in parsed.x509_authorities.iter().enumerate() {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate {} does not parse: {e}", i + 1))?;
    }
    if parsed.x509_authorities.is_empty() && parsed.jwks.is_empty() {
        return Err("the bundle has no X.509 authorities and no JWT keys".into());
    }
    Ok(parsed)
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Map<String, serde_json::Value>>,
}

fn parse_jwks(text: &[u8]) -> Result<ParsedBundle, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWK Set: {e}"))?;
    let mut x509_authorities = Vec::new();
    let mut jwt_keys = Vec::new();
    for (i, key) in set.keys.into_iter().enumerate() {
        let n = i + 1;
        match key.get("use").and_then(|v| v.as_str()) {
            Some("x509-svid") => {
                let x5c = key
                    .get("x5c")
                    .and_then(|v| v.as_array())
                    .filter(|a| a.len() == 1)
                    .and_then(|a| a[0].as_str())
                    .ok_or_else(|| {
                        format!("key {n}: an x509-svid key needs exactly one x5c certificate")
                    })?;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(x5c)
                    .map_err(|_| format!("key {n}: x5c is not base64"))?;
                x509_authorities.push(der);
            }
            Some("jwt-svid") => {
                if key
                    .get("kid")
                    .and_then(|v| v.as_str())
                    .is_none_or(str::is_empty)
                {
                    return Err(format!("key {n}: a jwt-svid key needs a kid"));
                }
                jwt_keys.push(serde_json::Value::Object(key));
            }
            // Keys for other uses are ignored, as the spec allows.
            _ => {}
        }
    }
    let jwks = if jwt_keys.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&serde_json::json!({ "keys": jwt_keys }))
            .map_err(|e| format!("cannot re-encode the JWT keys: {e}"))?
    };
    Ok(ParsedBundle {
        x509_authorities,
        jwks,
    })
}

struct Source {
    trust_domain: String,
    path: PathBuf,
    /// Modification time and contents of the last good read, and when the file was last
    /// looked at.
    last: Mutex<(Option<SystemTime>, ParsedBundle, Instant)>,
}

/// How often a bundle file is looked at, however many agents sync: one `stat` a second
/// per partner, not one per agent request.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

fn read(path: &Path) -> Result<(Option<SystemTime>, ParsedBundle), String> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parsed = parse_bundle(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((Some(modified), parsed))
}

/// The configured federated bundles, kept current from their files.
#[derive(Default)]
pub struct FederatedBundles {
    sources: Vec<Source>,
    recheck_after: Duration,
}

impl FederatedBundles {
    /// Reads every configured bundle once; an unreadable or malformed one is an error at
    /// start, so a typo is found before any workload depends on it.
    pub fn load(own_trust_domain: &str, configs: &[FederationConfig]) -> Result<Self, String> {
        let mut sources: Vec<Source> = Vec::new();
        for c in configs {
            spiffe::TrustDomain::new(&c.trust_domain)
                .map_err(|e| format!("federation trust_domain {:?}: {e}", c.trust_domain))?;
            if c.trust_domain == own_trust_domain {
                return Err(format!(
                    "federation trust_domain {:?} is this server's own trust domain",
                    c.trust_domain
                ));
            }
            if sources.iter().any(|s| s.trust_domain == c.trust_domain) {
                return Err(format!(
                    "federation trust_domain {:?} is configured twice",
                    c.trust_domain
                ));
            }
            let (modified, bundle) = read(&c.bundle_file)
                .map_err(|e| format!("federation with {}: {e}", c.trust_domain))?;
            sources.push(Source {
                trust_domain: c.trust_domain.clone(),
                path: c.bundle_file.clone(),
                last: Mutex::new((modified, bundle, Instant::now())),
            });
        }
        Ok(FederatedBundles {
            sources,
            recheck_after: RECHECK_AFTER,
        })
    }

    /// The bundles as of now, re-reading any file whose modification time changed (each
    /// file is looked at no more than once per second).
    pub fn current(&self) -> Vec<pb::FederatedBundle> {
        self.sources
            .iter()
            .map(|s| {
                let Ok(mut last) = s.last.lock() else {
                    return pb::FederatedBundle {
                        trust_domain: s.trust_domain.clone(),
                        ..Default::default()
                    };
                };
                let now = Instant::now();
                let modified = if now.duration_since(last.2) >= self.recheck_after {
                    last.2 = now;
                    std::fs::metadata(&s.path).and_then(|m| m.modified()).ok()
                } else {
                    None
                };
                if modified.is_some() && modified != last.0 {
                    match read(&s.path) {
                        Ok((when, bundle)) => {
                            if bundle != last.1 {
                                tracing::info!(trust_domain = %s.trust_domain, "federated bundle updated");
                            }
                            (last.0, last.1) = (when, bundle);
                        }
                        Err(e) => {
                            tracing::error!(trust_domain = %s.trust_domain, error = %e,
                                "federated bundle not updated; keeping the last good one");
                            last.0 = modified;
                        }
                    }
                }
                pb::FederatedBundle {
                    trust_domain: s.trust_domain.clone(),
                    x509_authorities: last.1.x509_authorities.clone(),
                    jwks: last.1.jwks.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_der() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn spiffe_bundle(der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!(
            r#"{{"spiffe_sequence": 3, "keys": [
                {{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "a", "y": "b", "x5c": ["{b64}"]}},
                {{"use": "jwt-svid", "kty": "EC", "kid": "k1", "crv": "P-256", "x": "a", "y": "b"}}
            ]}}"#
        )
    }

    #[test]
    fn spiffe_bundle_json_and_pem_parse() {
        let der = cert_der();
        let b = parse_bundle(spiffe_bundle(&der).as_bytes()).unwrap();
        assert_eq!(b.x509_authorities, vec![der.clone()]);
        let jwks: serde_json::Value = serde_json::from_slice(&b.jwks).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], "k1");
        let pem_text = pem::encode(&pem::Pem::new("CERTIFICATE", der.clone()));
        let b = parse_bundle(pem_text.as_bytes()).unwrap();
        assert_eq!(b.x509_authorities, vec![der]);
        assert!(b.jwks.is_empty());
    }

    #[test]
    fn malformed_bundles_are_refused_with_a_reason() {
        for (text, why) in [
            ("{\"keys\": []}", "no X.509 authorities"),
            ("{\"keys\": [{\"use\": \"x509-svid\"}]}", "exactly one x5c"),
            (
                "{\"keys\": [{\"use\": \"x509-svid\", \"x5c\": [\"%%\"]}]}",
                "not base64",
            ),
            (
                "{\"keys\": [{\"use\": \"x509-svid\", \"x5c\": [\"AAAA\"]}]}",
                "does not parse",
            ),
            (
                "{\"keys\": [{\"use\": \"jwt-svid\", \"kty\": \"EC\"}]}",
                "needs a kid",
            ),
            ("{\"keys\": 7}", "not a JWK Set"),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "unexpected PEM block",
            ),
            ("", "no X.509 authorities"),
        ] {
            let e = parse_bundle(text.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn files_are_reloaded_on_change_and_a_bad_edit_keeps_the_last_good_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partner.json");
        let first = cert_der();
        std::fs::write(&path, spiffe_bundle(&first)).unwrap();
        let cfg = [FederationConfig {
            trust_domain: "partner.example".into(),
            bundle_file: path.clone(),
        }];
        let mut fed = FederatedBundles::load("example.org", &cfg).unwrap();
        assert_eq!(fed.current()[0].x509_authorities, vec![first.clone()]);
        // Until recheck_after has passed since the last look, the file is not looked at.
        fed.recheck_after = Duration::from_secs(3600);
        let second = cert_der();
        std::fs::write(&path, spiffe_bundle(&second)).unwrap();
        assert_eq!(fed.current()[0].x509_authorities, vec![first.clone()]);
        fed.recheck_after = Duration::ZERO;

        let bump = |t: u64| {
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t))
                .unwrap();
        };
        bump(1_000);
        assert_eq!(fed.current()[0].x509_authorities, vec![second.clone()]);
        std::fs::write(&path, "garbage").unwrap();
        bump(2_000);
        assert_eq!(fed.current()[0].x509_authorities, vec![second]);

        for (td, why) in [
            ("example.org", "own trust domain"),
            ("Bad TD!", "trust_domain"),
        ] {
            let cfg = [FederationConfig {
                trust_domain: td.into(),
                bundle_file: path.clone(),
            }];
            let e = FederatedBundles::load("example.org", &cfg).err().unwrap();
            assert!(e.contains(why), "{e}");
        }
        let missing = [FederationConfig {
            trust_domain: "partner.example".into(),
            bundle_file: dir.path().join("nope"),
        }];
        let e = FederatedBundles::load("example.org", &missing)
            .err()
            .unwrap();
        assert!(e.contains("cannot read"), "{e}");
    }
}
