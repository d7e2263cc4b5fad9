//! Modified UTF-7 (RFC 3501 section 5.1.3), the encoding of IMAP folder names on the wire.
//!
//! Written here rather than taken from a crate so that a malformed name from a hostile or
//! broken server is an error value, never a panic.

use base64::Engine;

/// Decodes a folder name as the server sent it. `None` when it is not valid modified UTF-7;
/// callers then keep the raw name.
pub fn decode(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after.find('-')?;
        let encoded = &after[..end];
        if encoded.is_empty() {
            out.push('&');
        } else {
            let b64: String = encoded.replace(',', "/");
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(b64.as_bytes())
                .ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            out.push_str(&String::from_utf16(&units).ok()?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_rfc_examples_and_umlauts() {
        assert_eq!(decode("INBOX").as_deref(), Some("INBOX"));
        assert_eq!(decode("Gr&APYA3w-e").as_deref(), Some("Größe"));
        assert_eq!(decode("&ZeVnLIqe-").as_deref(), Some("日本語"));
        assert_eq!(decode("Tom &- Jerry").as_deref(), Some("Tom & Jerry"));
        assert_eq!(
            decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-").as_deref(),
            Some("~peter/mail/台北/日本語")
        );
    }

    #[test]
    fn malformed_names_are_rejected_not_panicking() {
        for bad in ["&", "&AAA", "&!!!-", "&AP-", "&2D0-"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
