//! EST message bodies: base64 in both directions (RFC 7030 §4, as RFC 8951 clarifies:
//! bodies are always base64, line breaks are allowed, `Content-Transfer-Encoding` is
//! ignored), and the media types of each operation.

use base64::Engine;

/// `application/pkcs10`: enrollment requests.
pub const PKCS10: &str = "application/pkcs10";
/// `application/pkcs7-mime; smime-type=certs-only`: certificates in responses.
pub const PKCS7_CERTS_ONLY: &str = "application/pkcs7-mime; smime-type=certs-only";
/// `application/pkcs7-mime`: `/cacerts`.
pub const PKCS7: &str = "application/pkcs7-mime";
/// `application/csrattrs`.
pub const CSRATTRS: &str = "application/csrattrs";

/// Decodes a base64 body, ignoring ASCII whitespace (CRLF line breaks are common). The
/// error says what is wrong without echoing the body.
pub fn decode(body: &[u8]) -> Result<Vec<u8>, String> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err("the body is empty; expected a base64-encoded DER PKCS#10 request".into());
    }
    if let Some(pos) = compact
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')))
    {
        return Err(format!(
            "the body is not base64: byte {} (0x{:02x}) is outside the base64 alphabet",
            pos, compact[pos]
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| format!("the body is not valid base64: {e}"))
}

/// Encodes a response body as base64 in 64-character lines.
pub fn encode(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2);
    for chunk in b64.as_bytes().chunks(64) {
        // Chunks of an ASCII string are ASCII.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// The media type of a request without parameters, lowercased.
pub fn media_type(value: Option<&str>) -> Option<String> {
    value
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_are_tolerated_both_styles() {
        let data: Vec<u8> = (0..=255u8).collect();
        let plain = base64::engine::general_purpose::STANDARD.encode(&data);
        assert_eq!(decode(plain.as_bytes()).unwrap(), data);
        assert_eq!(decode(encode(&data).as_bytes()).unwrap(), data);
        let crlf = encode(&data).replace('\n', "\r\n");
        assert_eq!(decode(crlf.as_bytes()).unwrap(), data);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let e = decode(b"MIIB$$$").unwrap_err();
        assert!(e.contains("outside the base64 alphabet"), "{e}");
        assert!(decode(b"\r\n").unwrap_err().contains("empty"));
        assert!(decode(b"QUJD=").is_err(), "bad padding");
    }

    #[test]
    fn media_type_ignores_parameters_and_case() {
        assert_eq!(
            media_type(Some("Application/PKCS10; charset=x")).as_deref(),
            Some("application/pkcs10")
        );
        assert_eq!(media_type(None), None);
    }
}
