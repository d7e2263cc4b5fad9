//! Encryption keys: the key file, what is derived from each key, and sealing.
//!
//! A key file holds one or more 256-bit keys, one a line, each written as 64 hex digits or
//! as base64, optionally after a name and a colon; blank lines and `#` comments are
//! ignored. The **last** key seals new data; every key before it is kept to read what was
//! sealed with it (rotation: append a new key, never remove an old one).
//!
//! ```text
//! # mailvault archive keys; the last one encrypts new data
//! 2024: 8d1c0b6e4f3a2b19c7d5e6f8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8
//! 2025: jV3Hq0wq7y1ZbJ6b2mS3m1Wq5Qe9cK2o8G4u0Yx1Z9o=
//! ```
//!
//! Nothing is ever used straight from a key: HMAC-SHA256 under the key with a fixed label
//! derives a fingerprint (which objects record, so that a reader knows which key to use
//! and a wrong key is named rather than tried), a key for message identifiers, and one
//! AES-256-GCM key per sealed object (from the object's random salt), so that nonces only
//! need to be unique within one object. The cipher and the HMAC come from `ring`, which
//! the TLS stack already builds (hardware AES where the CPU has it, constant-time code).

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hmac;

/// Bytes an AEAD tag adds to every sealed blob.
pub const TAG_LEN: usize = 16;

const FINGERPRINT_LABEL: &[u8] = b"mailvault/v1/fingerprint";
const IDENTIFIER_LABEL: &[u8] = b"mailvault/v1/message-identifier";
const OBJECT_LABEL: &[u8] = b"mailvault/v1/object-key";

/// Names a key without revealing anything about it: the first 8 bytes of an HMAC under
/// the key. Recorded in every sealed object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 8]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let bytes = hex::decode(s).map_err(|_| ())?;
        Ok(Fingerprint(bytes.try_into().map_err(|_| ())?))
    }
}

/// One key and what is derived from it. Neither `Debug` nor `Display` shows key material.
#[derive(Clone)]
pub struct Key {
    name: String,
    fingerprint: Fingerprint,
    /// The key itself, as the HMAC key that derives everything else.
    derive: hmac::Key,
    /// Keys message identifiers, so that the store does not reveal which messages it holds.
    identifier: hmac::Key,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?}, {})", self.name, self.fingerprint)
    }
}

impl Key {
    pub fn new(name: impl Into<String>, bytes: &[u8; 32]) -> Key {
        let derive = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let fingerprint = hmac::sign(&derive, FINGERPRINT_LABEL);
        let identifier = hmac::sign(&derive, IDENTIFIER_LABEL);
        Key {
            name: name.into(),
            fingerprint: Fingerprint(fingerprint.as_ref()[..8].try_into().expect("8 bytes")),
            identifier: hmac::Key::new(hmac::HMAC_SHA256, identifier.as_ref()),
            derive,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The identifier of a message under this key: an HMAC of its SHA-256, which nobody
    /// without the key can compute for a message they know.
    pub fn identifier(&self, sha256: &[u8; 32]) -> [u8; 32] {
        hmac::sign(&self.identifier, sha256)
            .as_ref()
            .try_into()
            .expect("HMAC-SHA256 is 32 bytes")
    }

    /// The AEAD key of the object with this salt.
    pub(super) fn object_cipher(&self, salt: &[u8; 16]) -> Sealing {
        let mut input = Vec::with_capacity(OBJECT_LABEL.len() + salt.len());
        input.extend_from_slice(OBJECT_LABEL);
        input.extend_from_slice(salt);
        let derived = hmac::sign(&self.derive, &input);
        let key = UnboundKey::new(&AES_256_GCM, derived.as_ref()).expect("a 32-byte key");
        Sealing {
            key: LessSafeKey::new(key),
        }
    }
}

/// The AEAD key of one object. Blobs in it are told apart by their offset, which is the
/// nonce: unique within the object, and the key is unique to the object.
pub(super) struct Sealing {
    key: LessSafeKey,
}

impl Sealing {
    fn nonce(offset: u64) -> Nonce {
        let mut nonce = [0u8; aead::NONCE_LEN];
        nonce[4..].copy_from_slice(&offset.to_be_bytes());
        Nonce::assume_unique_for_key(nonce)
    }

    /// Seals `in_out` in place and returns the tag to append.
    pub fn seal(&self, offset: u64, header: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(Self::nonce(offset), Aad::from(header), in_out)
            .expect("blobs are far below the AES-GCM length limit");
        tag.as_ref().try_into().expect("16-byte tag")
    }

    /// Opens a sealed blob (ciphertext and tag) in place; `None` if it was altered or
    /// sealed with another key.
    pub fn open<'a>(&self, offset: u64, header: &[u8], in_out: &'a mut [u8]) -> Option<&'a [u8]> {
        self.key
            .open_in_place(Self::nonce(offset), Aad::from(header), in_out)
            .ok()
            .map(|plain| &*plain)
    }
}

/// The keys of an archive: the last one seals new data, all of them open old data.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Vec<Key>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("encryption key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("encryption key file {path}, line {line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("encryption key file {path} holds no key (one 256-bit key a line, as 64 hex digits or base64)")]
    Empty { path: String },
}

impl KeyRing {
    /// A ring of the given keys, the last one sealing new data. Panics without keys.
    pub fn new(keys: Vec<Key>) -> KeyRing {
        assert!(!keys.is_empty(), "a key ring has at least one key");
        KeyRing { keys }
    }

    /// Reads a key file (see the module documentation). Errors name the file and line,
    /// never the key.
    pub fn load(path: &Path) -> Result<KeyRing, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        KeyRing::parse(&path.display().to_string(), &text)
    }

    /// Parses the text of a key file; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<KeyRing, KeyFileError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let error = |message: String| KeyFileError::Line {
                path: origin.to_string(),
                line: line_no,
                message,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = match line.split_once(':') {
                Some((name, value)) => (name.trim().to_string(), value.trim()),
                None => (format!("line {line_no}"), line),
            };
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(error(
                    "a key name is 1 to 64 printable characters before the colon".into(),
                ));
            }
            let bytes = decode_key(value).ok_or_else(|| {
                error(format!(
                    "key {name:?} is not 256 bits written as 64 hex digits or base64 \
                     ({} characters)",
                    value.len()
                ))
            })?;
            let key = Key::new(name, &bytes);
            if let Some(other) = keys.iter().find(|k| k.name == key.name) {
                return Err(error(format!("the name {:?} is used twice", other.name)));
            }
            if let Some(other) = keys.iter().find(|k| k.fingerprint == key.fingerprint) {
                return Err(error(format!(
                    "key {:?} repeats key {:?}",
                    key.name, other.name
                )));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty {
                path: origin.to_string(),
            });
        }
        Ok(KeyRing { keys })
    }

    /// The key that seals new data.
    pub fn current(&self) -> &Key {
        self.keys.last().expect("a key ring is never empty")
    }

    pub fn get(&self, fingerprint: Fingerprint) -> Option<&Key> {
        self.keys.iter().find(|k| k.fingerprint == fingerprint)
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// `name (fingerprint)` of every key, for messages.
    pub fn describe(&self) -> String {
        self.keys
            .iter()
            .map(|k| format!("{:?} ({})", k.name, k.fingerprint))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn decode_key(value: &str) -> Option<[u8; 32]> {
    let bytes = if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(value).ok()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(value))
            .ok()?
    };
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn key_files_take_hex_base64_names_and_comments() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let text = format!("# keys\n\n{HEX}\n  2025 : {b64}  \n");
        let ring = KeyRing::parse("keys.txt", &text).unwrap();
        assert_eq!(ring.keys().len(), 2);
        assert_eq!(ring.keys()[0].name(), "line 3");
        assert_eq!(ring.current().name(), "2025");
        let again = KeyRing::parse("k", &format!("a: {HEX}")).unwrap();
        assert_eq!(
            again.current().fingerprint(),
            ring.keys()[0].fingerprint(),
            "the fingerprint depends on the key only"
        );
        assert_ne!(ring.keys()[0].fingerprint(), ring.keys()[1].fingerprint());
    }

    #[test]
    fn bad_key_files_say_where_and_never_show_the_key() {
        let short = &HEX[..62];
        let cases = [
            (
                format!("{HEX}\nk: {short}"),
                "keys.txt, line 2: key \"k\" is not 256 bits",
            ),
            (
                format!("a: {HEX}\na: {HEX}"),
                "line 2: the name \"a\" is used twice",
            ),
            (
                format!("a: {HEX}\nb: {HEX}"),
                "line 2: key \"b\" repeats key \"a\"",
            ),
            (": x".to_string(), "line 1: a key name is 1 to 64"),
            ("# nothing\n".to_string(), "holds no key"),
        ];
        for (text, expected) in cases {
            let message = KeyRing::parse("keys.txt", &text).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
            assert!(
                !message.contains(short) && !message.contains(HEX),
                "{message}"
            );
        }
        let ring = KeyRing::parse("k", HEX).unwrap();
        assert!(!format!("{ring:?}").contains(HEX));
    }

    #[test]
    fn identifiers_are_keyed() {
        let one = Key::new("one", &[1; 32]);
        let two = Key::new("two", &[2; 32]);
        let sha = [9u8; 32];
        assert_eq!(one.identifier(&sha), one.identifier(&sha));
        assert_ne!(one.identifier(&sha), two.identifier(&sha));
        assert_ne!(one.identifier(&sha), sha);
    }

    #[test]
    fn sealing_binds_key_salt_offset_and_header() {
        let key = Key::new("k", &[3; 32]);
        let sealing = key.object_cipher(&[5; 16]);
        let mut data = b"hello archive".to_vec();
        let tag = sealing.seal(40, b"header", &mut data);
        assert_ne!(&data[..], b"hello archive");
        data.extend_from_slice(&tag);
        let open = |sealing: &Sealing, offset, header: &[u8]| {
            let mut copy = data.clone();
            sealing.open(offset, header, &mut copy).map(<[u8]>::to_vec)
        };
        assert_eq!(
            open(&sealing, 40, b"header").as_deref(),
            Some(&b"hello archive"[..])
        );
        assert_eq!(open(&sealing, 41, b"header"), None);
        assert_eq!(open(&sealing, 40, b"headeR"), None);
        assert_eq!(open(&key.object_cipher(&[6; 16]), 40, b"header"), None);
        assert_eq!(
            open(
                &Key::new("k", &[4; 32]).object_cipher(&[5; 16]),
                40,
                b"header"
            ),
            None
        );
        let mut flipped = data.clone();
        flipped[3] ^= 1;
        assert!(sealing.open(40, b"header", &mut flipped).is_none());
    }
}
