//! The go-plugin handshake: the magic cookie SPIRE sets for each plugin type, and the
//! single line the plugin prints on stdout to say where its gRPC server listens.

use std::path::Path;

/// go-plugin's core protocol version (the first handshake field).
pub const CORE_PROTOCOL_VERSION: u32 = 1;

/// SPIRE's application protocol version (the second field); SPIRE only offers 1.
pub const APP_PROTOCOL_VERSION: u32 = 1;

/// Why the process refuses to run as a plugin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CookieError {
    /// The cookie variable is absent: the binary was started by hand, not by SPIRE.
    #[error(
        "this binary is a SPIRE {plugin_type} plugin and is not meant to be run directly: \
         configure it as `{plugin_type} \"...\" {{ plugin_cmd = \"<path to this binary>\" }}` \
         in SPIRE's config (environment variable {plugin_type} is not set)"
    )]
    Missing {
        /// The plugin type whose cookie was expected.
        plugin_type: String,
    },
    /// The cookie has another value: SPIRE loads this binary as a different plugin type.
    #[error(
        "this binary is a SPIRE {plugin_type} plugin, but it was started with cookie \
         {plugin_type}={found:?}; check the plugin type this binary is configured under in SPIRE's config"
    )]
    Wrong {
        /// The plugin type whose cookie was expected.
        plugin_type: String,
        /// The value found.
        found: String,
    },
}

/// Checks the go-plugin magic cookie. SPIRE sets `<Type>=<Type>` (for example
/// `UpstreamAuthority=UpstreamAuthority`), so a binary started by hand or under the
/// wrong plugin type stops with a clear message instead of waiting for a host.
pub fn check_cookie(
    plugin_type: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(), CookieError> {
    match lookup(plugin_type) {
        None => Err(CookieError::Missing {
            plugin_type: plugin_type.to_string(),
        }),
        Some(v) if v == plugin_type => Ok(()),
        Some(found) => Err(CookieError::Wrong {
            plugin_type: plugin_type.to_string(),
            found,
        }),
    }
}

/// Whether the host's `PLUGIN_PROTOCOL_VERSIONS` (comma separated) offers our version.
/// When it does not, the plugin still answers version 1 and lets the host report the
/// mismatch, as go-plugin's own servers do.
pub fn host_offers_our_version(versions: Option<&str>) -> bool {
    match versions {
        None => true,
        Some(list) => list
            .split(',')
            .any(|v| v.trim() == APP_PROTOCOL_VERSION.to_string()),
    }
}

/// The handshake line for a gRPC server on a Unix socket, without the newline:
/// `1|1|unix|<path>|grpc|` (the empty sixth field means "no TLS certificate").
pub fn handshake_line(socket: &Path) -> String {
    format!(
        "{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{}|grpc|",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn handshake_line_has_the_fields_go_plugin_parses() {
        let line = handshake_line(Path::new("/tmp/plugin123/plugin.sock"));
        assert_eq!(line, "1|1|unix|/tmp/plugin123/plugin.sock|grpc|");
        let parts: Vec<&str> = line.split('|').collect();
        assert_eq!(parts.len(), 6);
        assert_eq!(parts[0], "1");
        assert_eq!(parts[1], "1");
        assert_eq!(parts[2], "unix");
        assert_eq!(parts[4], "grpc");
        assert!(parts[5].is_empty(), "no certificate field under SPIRE");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn cookie_must_equal_the_plugin_type() {
        let ok = env(&[("UpstreamAuthority", "UpstreamAuthority")]);
        assert_eq!(check_cookie("UpstreamAuthority", ok), Ok(()));
    }

    #[test]
    fn missing_cookie_is_refused_with_a_hint() {
        let err = check_cookie("UpstreamAuthority", env(&[])).unwrap_err();
        assert!(matches!(err, CookieError::Missing { .. }));
        let msg = err.to_string();
        assert!(msg.contains("not meant to be run directly"), "{msg}");
        assert!(msg.contains("plugin_cmd"), "{msg}");
    }

    #[test]
    fn wrong_cookie_names_both_types() {
        // A NodeAttestor binary started as an UpstreamAuthority sees the wrong variable
        // set; a tampered value is refused too.
        let err = check_cookie(
            "NodeAttestor",
            env(&[("NodeAttestor", "UpstreamAuthority")]),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("NodeAttestor=\"UpstreamAuthority\""), "{msg}");
        let err = check_cookie(
            "UpstreamAuthority",
            env(&[("NodeAttestor", "NodeAttestor")]),
        )
        .unwrap_err();
        assert!(matches!(err, CookieError::Missing { .. }));
    }

    #[test]
    fn protocol_version_list_is_parsed() {
        assert!(host_offers_our_version(Some("1")));
        assert!(host_offers_our_version(Some("2, 1")));
        assert!(!host_offers_our_version(Some("2,3")));
        assert!(host_offers_our_version(None));
    }
}
