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

/// Encodes a folder name the way RFC 3501 prescribes: printable ASCII as itself (`&` as
/// `&-`), everything else in base64 runs. Every name has exactly one such encoding, so a
/// server name that differs from the encoding of its decoding is not one a careful server
/// sends, and two different server names may decode alike.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u8> = Vec::new();
    let flush = |out: &mut String, pending: &mut Vec<u8>| {
        if !pending.is_empty() {
            out.push('&');
            let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&pending);
            out.push_str(&b64.replace('/', ","));
            out.push('-');
            pending.clear();
        }
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut out, &mut pending);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                pending.extend_from_slice(&unit.to_be_bytes());
            }
        }
    }
    flush(&mut out, &mut pending);
    out
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

    #[test]
    fn encodes_what_it_decodes() {
        for (raw, name) in [
            ("INBOX", "INBOX"),
            ("Gr&APYA3w-e", "Größe"),
            ("&ZeVnLIqe-", "日本語"),
            ("Tom &- Jerry", "Tom & Jerry"),
            ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),
            ("&2D3eAA-", "😀"),
        ] {
            assert_eq!(encode(name), raw, "{name}");
            assert_eq!(decode(raw).as_deref(), Some(name), "{raw}");
        }
        // Valid, but not how the name is encoded: another server name for "ö".
        assert_eq!(decode("&APY-&AN8-").as_deref(), Some("öß"));
        assert_ne!(encode("öß"), "&APY-&AN8-");
    }

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
