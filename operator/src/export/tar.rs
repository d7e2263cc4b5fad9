//! A small tar writer (POSIX.1-2001 pax format) for streaming an export: directories and
//! regular files whose size is known before their bytes are written, nothing else.
//!
//! Each entry is a 512-byte ustar header followed by the file's bytes padded to 512. A name
//! that does not fit the header (longer than 100 bytes, or not ASCII) goes into a pax
//! extended header before it, as a `path` record in UTF-8, which GNU tar, bsdtar and every
//! POSIX tar read. The archive ends with two zero blocks.

use std::collections::HashSet;
use std::io::{self, Write};

const BLOCK: usize = 512;
/// Name field of the ustar header.
const NAME_LEN: usize = 100;
/// The largest size the 11 octal digits of the size field hold (8 GiB - 1).
const MAX_OCTAL_SIZE: u64 = (1 << 33) - 1;

/// A tar stream being written to `out`.
pub struct Writer<W: Write> {
    out: W,
    /// Directories already written, with their trailing `/`.
    dirs: HashSet<String>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer {
            out,
            dirs: HashSet::new(),
        }
    }

    /// Writes the directory `path` (one name per level) and each of its parents, those
    /// not written before.
    pub fn dirs(&mut self, path: &[String], mtime: u64) -> io::Result<()> {
        let mut name = String::new();
        for level in path {
            name.push_str(level);
            name.push('/');
            if self.dirs.insert(name.clone()) {
                self.entry(&name, b'5', 0o755, 0, mtime)?;
            }
        }
        Ok(())
    }

    /// Writes a regular file.
    pub fn file(&mut self, name: &str, bytes: &[u8], mtime: u64) -> io::Result<()> {
        self.entry(name, b'0', 0o644, bytes.len() as u64, mtime)?;
        self.out.write_all(bytes)?;
        self.pad(bytes.len())
    }

    /// Ends the archive and hands back the stream, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, name: &str, kind: u8, mode: u64, size: u64, mtime: u64) -> io::Result<()> {
        if name.len() > NAME_LEN || !name.is_ascii() {
            let record = pax_record("path", name);
            self.out.write_all(&header(
                "PaxHeader",
                b'x',
                0o644,
                record.len() as u64,
                mtime,
            ))?;
            self.out.write_all(&record)?;
            self.pad(record.len())?;
            self.out
                .write_all(&header(&ascii_prefix(name), kind, mode, size, mtime))
        } else {
            self.out.write_all(&header(name, kind, mode, size, mtime))
        }
    }

    fn pad(&mut self, written: usize) -> io::Result<()> {
        let rest = written % BLOCK;
        if rest == 0 {
            return Ok(());
        }
        self.out.write_all(&[0; BLOCK][rest..])
    }
}

/// A ustar header. `name` is ASCII and at most 100 bytes.
fn header(name: &str, kind: u8, mode: u64, size: u64, mtime: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], mode);
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    if size <= MAX_OCTAL_SIZE {
        octal(&mut h[124..136], size);
    } else {
        // GNU's base-256 form, read by GNU tar and bsdtar: the high bit, then big-endian.
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime.min(MAX_OCTAL_SIZE));
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is taken with its own field as spaces, and written as six octal digits,
    // a NUL and a space.
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    octal(&mut h[148..155], sum);
    h
}

/// `value` in octal, zero-padded to fill `field` but its last byte, which is NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
}

/// One pax record, `"<length> <key>=<value>\n"`, where the length counts the whole record
/// including its own digits.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = format!(" {key}={value}\n");
    let mut len = rest.len() + 1;
    while len.to_string().len() + rest.len() != len {
        len = len.to_string().len() + rest.len();
    }
    format!("{len}{rest}").into_bytes()
}

/// What a reader without pax support sees as the name: the ASCII of `name`, others as `_`,
/// at most 100 bytes.
fn ascii_prefix(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii() { c } else { '_' })
        .take(NAME_LEN)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        assert_eq!(pax_record("path", "a"), b"9 path=a\n");
        // 93 bytes without the length: two digits make 95...
        let value = "x".repeat(86);
        let record = pax_record("path", &value);
        assert_eq!(record.len(), 95);
        assert!(record.starts_with(b"95 path="));
        // ...and at the edge where adding the digits adds a digit.
        for n in 85..=110 {
            let record = pax_record("path", &"y".repeat(n));
            let (len, _) = std::str::from_utf8(&record)
                .unwrap()
                .split_once(' ')
                .unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), record.len(), "value of {n}");
        }
    }

    #[test]
    fn headers_carry_a_valid_checksum_and_sizes_beyond_octal() {
        let h = header("a/1.eml", b'0', 0o644, 1234, 1_700_000_000);
        assert_eq!(&h[..7], b"a/1.eml");
        assert_eq!(&h[124..136], b"00000002322\0");
        let stored = u64::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut blank = h;
        blank[148..156].fill(b' ');
        assert_eq!(stored, blank.iter().map(|&b| u64::from(b)).sum::<u64>());
        assert_eq!(&h[154..156], b"\0 ");

        let big = header("big", b'0', 0o644, 10 << 30, 0);
        assert_eq!(big[124], 0x80);
        assert_eq!(
            u64::from_be_bytes(big[128..136].try_into().unwrap()),
            10 << 30
        );
    }

    #[test]
    fn entries_fill_whole_blocks_and_long_names_get_a_pax_header() {
        let mut tar = Writer::new(Vec::new());
        tar.dirs(&["Ünïcödé".to_string(), "b".to_string()], 0)
            .unwrap();
        tar.file("short", b"abc", 0).unwrap();
        tar.file(&"n".repeat(150), &[7; 512], 0).unwrap();
        let out = tar.finish().unwrap();
        assert_eq!(out.len() % BLOCK, 0);
        // pax + "Ünïcödé/", pax + its "b/", "short" + one block, pax + long + one block, end.
        assert_eq!(out.len(), BLOCK * (3 + 3 + 2 + 3 + 1 + 2));
        assert_eq!(out[BLOCK * 2 + 156], b'5');
    }
}
