//! Reproducible sample messages: valid RFC 5322 with CRLF line ends, a unique Message-ID,
//! and bodies of a chosen size, so that tests and benchmarks can compare bytes exactly.

/// A small deterministic random number generator (PCG-style LCG), so that the same seed
/// gives the same mailbox on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let x = self.0;
        (x ^ (x >> 33)).wrapping_mul(0xff51afd7ed558ccd) ^ (x >> 29)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// One message of about `size` bytes (never less than its headers).
pub fn message(seed: u64, n: u64, from: &str, to: &str, subject: &str, size: usize) -> Vec<u8> {
    let mut out = format!(
        "Return-Path: <{from}>\r\nFrom: {from}\r\nTo: {to}\r\nSubject: {subject}\r\n\
         Date: Mon, 6 Jan 2025 10:{:02}:{:02} +0000\r\nMessage-ID: <{n}.{seed}@mailvault.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        (n / 60) % 60,
        n % 60
    )
    .into_bytes();
    let mut rng = Rng::new(seed ^ n.wrapping_mul(0x9e3779b97f4a7c15));
    const ALPHABET: &[u8] =
        b"abcdefghijklmnopqrstuvwxyz      ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,";
    while out.len() + 2 < size {
        let len = 76.min(size - out.len() - 2).max(1);
        for _ in 0..len {
            out.push(ALPHABET[rng.below(ALPHABET.len() as u64) as usize]);
        }
        out.extend_from_slice(b"\r\n");
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Sizes like a real mailbox: mostly a few KB, some tens of KB, a few large attachments;
/// about 37 KB on average.
pub fn mixed_size(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=59 => 2_000 + rng.below(8_000) as usize,
        60..=89 => 10_000 + rng.below(60_000) as usize,
        90..=98 => 70_000 + rng.below(130_000) as usize,
        _ => 300_000 + rng.below(700_000) as usize,
    }
}

/// `count` messages of mixed sizes for one mailbox.
pub fn mailbox(seed: u64, owner: &str, count: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|n| {
            let size = mixed_size(&mut rng);
            message(
                seed,
                n,
                "sender@example.net",
                owner,
                &format!("Message {n}"),
                size,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_reproducible_and_sized() {
        let a = message(1, 2, "a@x", "b@x", "s", 5000);
        assert_eq!(a, message(1, 2, "a@x", "b@x", "s", 5000));
        assert_ne!(a, message(1, 3, "a@x", "b@x", "s", 5000));
        assert!((5000..5080).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).filter(|w| w == b"\r\n").count() > 10);
        let total: usize = mailbox(7, "o@x", 2000).iter().map(Vec::len).sum();
        let average = total / 2000;
        assert!((25_000..50_000).contains(&average), "{average}");
    }
}
