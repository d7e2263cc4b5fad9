//! The byte layout shared by every pack-store object: a 32-byte header, then blobs.
//!
//! ```text
//! header   magic "mvlt" | version 1 | kind | 0 0 | key fingerprint (8, zero: not sealed) | salt (16)
//! blob     codec (1: 0 raw, 1 zstd) | payload              not sealed
//!          AES-256-GCM(codec | payload) | tag (16)         sealed: nonce = the blob's offset,
//!                                                          associated data = the header
//! ```
//!
//! A blob is found by its offset and stored length alone, so a reader fetches exactly its
//! bytes (a range read) and, with the header, can open it. Sealing binds each blob to its
//! object (the key is derived from the salt), its place (the nonce) and the header (kind
//! and key), so blobs cannot be moved, swapped or relabelled unnoticed.

use std::borrow::Cow;
use std::cell::RefCell;

use super::keys::{Fingerprint, KeyRing, Sealing, TAG_LEN};

pub const HEADER_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"mvlt";
const VERSION: u8 = 1;

const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// What an object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Message blobs.
    Pack = 1,
    /// The index of one pack.
    Delta = 2,
    /// The index entries of one bucket of a compacted generation.
    Bucket = 3,
    /// The sorted identifier prefixes of a compacted generation.
    Fingerprints = 4,
    /// What a compacted generation covers.
    Manifest = 5,
    /// Marks that a key seals data in this archive.
    KeyMarker = 6,
    /// A record of the archive outside the pack store (a folder's state or index segment).
    Record = 7,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Pack,
            2 => Kind::Delta,
            3 => Kind::Bucket,
            4 => Kind::Fingerprints,
            5 => Kind::Manifest,
            6 => Kind::KeyMarker,
            7 => Kind::Record,
            _ => return None,
        })
    }
}

/// The header of an object and the cipher for its blobs (none when not sealed).
pub struct Envelope {
    header: [u8; HEADER_LEN],
    sealing: Option<Sealing>,
}

impl Envelope {
    /// A new object of `kind`, sealed with the ring's current key if there is a ring.
    pub fn new(kind: Kind, keys: Option<&KeyRing>) -> Envelope {
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(MAGIC);
        header[4] = VERSION;
        header[5] = kind as u8;
        let salt: [u8; 16] = *uuid::Uuid::new_v4().as_bytes();
        header[16..].copy_from_slice(&salt);
        let sealing = keys.map(|ring| {
            let key = ring.current();
            header[8..16].copy_from_slice(&key.fingerprint().0);
            key.object_cipher(&salt)
        });
        Envelope { header, sealing }
    }

    /// Reads the header of an object of `kind`.
    pub fn open(kind: Kind, bytes: &[u8], keys: Option<&KeyRing>) -> Result<Envelope, String> {
        let header: [u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| format!("shorter than a header ({} bytes)", bytes.len()))?;
        if &header[..4] != MAGIC {
            return Err("not a mailvault pack-store object (bad magic)".into());
        }
        if header[4] != VERSION {
            return Err(format!(
                "format version {} (this mailvault reads {VERSION}); upgrade mailvault",
                header[4]
            ));
        }
        match Kind::from_byte(header[5]) {
            Some(k) if k == kind => {}
            other => return Err(format!("holds {other:?}, expected {kind:?}")),
        }
        let fingerprint = Fingerprint(header[8..16].try_into().expect("8 bytes"));
        let salt: [u8; 16] = header[16..].try_into().expect("16 bytes");
        let sealing = if fingerprint.0 == [0; 8] {
            None
        } else {
            let Some(keys) = keys else {
                return Err(format!(
                    "sealed with key {fingerprint}, and no encryption key was given"
                ));
            };
            let Some(key) = keys.get(fingerprint) else {
                return Err(format!(
                    "sealed with key {fingerprint}, which the key file lacks (it has {})",
                    keys.describe()
                ));
            };
            Some(key.object_cipher(&salt))
        };
        Ok(Envelope { header, sealing })
    }

    pub fn header(&self) -> &[u8; HEADER_LEN] {
        &self.header
    }

    /// The key that sealed the object, if any.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        let fp = Fingerprint(self.header[8..16].try_into().expect("8 bytes"));
        (fp.0 != [0; 8]).then_some(fp)
    }

    /// Appends a blob compressed beforehand (so that compressing, the costly part, can
    /// happen outside a lock around `object`); returns its stored length.
    pub fn append(&self, object: &mut Vec<u8>, blob: &Compressed<'_>) -> usize {
        let offset = object.len();
        object.push(blob.codec);
        object.extend_from_slice(&blob.payload);
        self.seal_from(object, offset)
    }

    /// Seals the blob that starts at `offset` and ends `object`, if this envelope seals;
    /// returns its stored length.
    fn seal_from(&self, object: &mut Vec<u8>, offset: usize) -> usize {
        if let Some(sealing) = &self.sealing {
            let tag = sealing.seal(offset as u64, &self.header, &mut object[offset..]);
            object.extend_from_slice(&tag);
        }
        object.len() - offset
    }

    /// The original bytes of the blob stored at `offset` as `stored`; `raw_len` is what
    /// the index says they are.
    pub fn read_blob(&self, offset: u64, stored: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
        let plain = self.unseal(offset, stored)?;
        let (&codec, payload) = plain.split_first().ok_or("empty blob")?;
        let raw = match codec {
            CODEC_RAW => payload.to_vec(),
            CODEC_ZSTD => zstd::bulk::decompress(payload, raw_len)
                .map_err(|e| format!("does not decompress: {e}"))?,
            other => return Err(format!("unknown codec {other}")),
        };
        if raw.len() != raw_len {
            return Err(format!(
                "holds {} bytes, the index says {raw_len}",
                raw.len()
            ));
        }
        Ok(raw)
    }

    /// The codec byte and payload of a blob: as stored, or opened.
    fn unseal<'a>(&self, offset: u64, stored: &'a [u8]) -> Result<Cow<'a, [u8]>, String> {
        let Some(sealing) = &self.sealing else {
            return Ok(Cow::Borrowed(stored));
        };
        let mut buffer = stored.to_vec();
        let len = sealing
            .open(offset, &self.header, &mut buffer)
            .ok_or("fails authentication: altered, or sealed with another key")?
            .len();
        buffer.truncate(len);
        Ok(Cow::Owned(buffer))
    }

    /// A whole object holding one blob: the header and `raw` (the form of every index
    /// object, and of a pack of one large message). It is compressed straight into the
    /// object, whose zeroed allocation leaves the pages compression does not fill untouched,
    /// so a large message is held once more, not twice (a compressed copy, then the object).
    pub fn single(&self, raw: &[u8], level: i32) -> Vec<u8> {
        let payload = HEADER_LEN + 1;
        let bound = zstd::zstd_safe::compress_bound(raw.len());
        let mut object = vec![0u8; payload + bound + TAG_LEN];
        object[..HEADER_LEN].copy_from_slice(&self.header);
        let written = with_compressor(level, |c| {
            c.compress_to_buffer(raw, &mut object[payload..payload + bound])
        })
        .expect("a buffer of zstd's bound holds the compressed bytes");
        if written < raw.len() {
            object[HEADER_LEN] = CODEC_ZSTD;
            object.truncate(payload + written);
        } else {
            object.truncate(HEADER_LEN);
            object.push(CODEC_RAW);
            object.extend_from_slice(raw);
        }
        self.seal_from(&mut object, HEADER_LEN);
        object
    }
}

/// Whether `bytes` start like an object of the pack store (no JSON record does).
pub fn is_enveloped(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Opens an object of `kind` that holds one blob (see [`Envelope::single`]).
pub fn open_single(kind: Kind, bytes: &[u8], keys: Option<&KeyRing>) -> Result<Vec<u8>, String> {
    let envelope = Envelope::open(kind, bytes, keys)?;
    let plain = envelope.unseal(HEADER_LEN as u64, &bytes[HEADER_LEN..])?;
    let (&codec, payload) = plain.split_first().ok_or("empty object")?;
    match codec {
        CODEC_RAW => Ok(payload.to_vec()),
        CODEC_ZSTD => {
            zstd::stream::decode_all(payload).map_err(|e| format!("does not decompress: {e}"))
        }
        other => Err(format!("unknown codec {other}")),
    }
}

/// A blob's codec and payload, before it is placed (and sealed) in an object.
pub struct Compressed<'a> {
    codec: u8,
    payload: Cow<'a, [u8]>,
}

impl<'a> Compressed<'a> {
    /// zstd at `level` when that is smaller, else the bytes as they are.
    pub fn of(raw: &'a [u8], level: i32) -> Compressed<'a> {
        let compressed = with_compressor(level, |c| c.compress(raw))
            .expect("compressing into a buffer of zstd's bound does not fail");
        if compressed.len() < raw.len() {
            Compressed {
                codec: CODEC_ZSTD,
                payload: Cow::Owned(compressed),
            }
        } else {
            Compressed {
                codec: CODEC_RAW,
                payload: Cow::Borrowed(raw),
            }
        }
    }

    /// Bytes the blob takes once placed, before any tag.
    pub fn placed_len(&self) -> usize {
        1 + self.payload.len()
    }
}

thread_local! {
    /// One compressor per thread, reused: creating a zstd context per message costs more
    /// than compressing a small one.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
}

/// Runs `f` with this thread's compressor, set to `level`.
fn with_compressor<R>(level: i32, f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> R) -> R {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let (lvl, compressor) = c.get_or_insert_with(|| {
            (
                level,
                zstd::bulk::Compressor::new(level).expect("a valid zstd level"),
            )
        });
        if *lvl != level {
            compressor
                .set_compression_level(level)
                .expect("a valid zstd level");
            *lvl = level;
        }
        f(compressor)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pack::keys::Key;

    fn ring(byte: u8) -> KeyRing {
        KeyRing::new(vec![Key::new("k", &[byte; 32])])
    }

    #[test]
    fn blobs_round_trip_compressed_raw_and_sealed() {
        let text = b"Subject: hi\r\n\r\n".repeat(500);
        // Hash output: incompressible.
        let noise: Vec<u8> = (0..160u32)
            .flat_map(|i| <sha2::Sha256 as sha2::Digest>::digest(i.to_le_bytes()))
            .collect();
        for keys in [None, Some(ring(1))] {
            let envelope = Envelope::new(Kind::Pack, keys.as_ref());
            let mut object = envelope.header().to_vec();
            let mut blobs = Vec::new();
            for raw in [&text[..], &noise[..], b""] {
                let offset = object.len();
                let stored = envelope.append(&mut object, &Compressed::of(raw, 3));
                blobs.push((offset, stored, raw));
            }
            // Text compresses; noise is stored as it is, plus the codec byte (and tag).
            let overhead = if keys.is_some() { 1 + TAG_LEN } else { 1 };
            assert!(blobs[0].1 < text.len() / 10);
            assert_eq!(blobs[1].1, noise.len() + overhead);
            let reader = Envelope::open(Kind::Pack, &object, keys.as_ref()).unwrap();
            for (offset, stored, raw) in blobs {
                let back = reader
                    .read_blob(offset as u64, &object[offset..offset + stored], raw.len())
                    .unwrap();
                assert_eq!(back, raw);
            }
            if keys.is_some() {
                assert!(!object.windows(11).any(|w| w == b"Subject: hi"));
            }
        }
    }

    #[test]
    fn wrong_kind_key_or_bytes_are_named() {
        let keys = ring(1);
        let object = Envelope::new(Kind::Delta, Some(&keys)).single(b"entries", 3);
        assert_eq!(
            open_single(Kind::Delta, &object, Some(&keys)).unwrap(),
            b"entries"
        );
        let fp = keys.current().fingerprint().to_string();
        let err = open_single(Kind::Delta, &object, None).unwrap_err();
        assert!(
            err.contains(&format!("sealed with key {fp}, and no encryption key")),
            "{err}"
        );
        let err = open_single(Kind::Delta, &object, Some(&ring(2))).unwrap_err();
        assert!(err.contains("which the key file lacks"), "{err}");
        let err = open_single(Kind::Bucket, &object, Some(&keys)).unwrap_err();
        assert!(err.contains("expected Bucket"), "{err}");
        let mut altered = object.clone();
        *altered.last_mut().unwrap() ^= 0x80;
        let err = open_single(Kind::Delta, &altered, Some(&keys)).unwrap_err();
        assert!(err.contains("fails authentication"), "{err}");
        // The header is bound too: relabelling the kind is noticed.
        let mut relabelled = object.clone();
        relabelled[5] = Kind::Bucket as u8;
        let err = open_single(Kind::Bucket, &relabelled, Some(&keys)).unwrap_err();
        assert!(err.contains("fails authentication"), "{err}");
        assert!(open_single(Kind::Delta, b"short", None)
            .unwrap_err()
            .contains("shorter"));
    }
}
