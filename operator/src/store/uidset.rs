//! A set of UIDs kept as sorted, disjoint ranges, written the IMAP way (`1:4000,4002`).
//!
//! The sync state of a folder is the set of UIDs already archived; as ranges it stays a few
//! bytes for a folder of any size whose messages were archived in order.
//!
//! ```
//! use mailvault::store::UidSet;
//!
//! let mut archived: UidSet = "1:4000,4002".parse().unwrap();
//! archived.insert(4001);
//! assert_eq!(archived.to_string(), "1:4002");
//! assert!(archived.contains(17) && !archived.contains(4003));
//! ```

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UidSet {
    /// Sorted, disjoint, non-adjacent inclusive ranges.
    ranges: Vec<(u32, u32)>,
}

impl UidSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, uid: u32) -> bool {
        let i = self.ranges.partition_point(|&(_, end)| end < uid);
        self.ranges.get(i).is_some_and(|&(start, _)| start <= uid)
    }

    pub fn insert(&mut self, uid: u32) {
        let i = self
            .ranges
            .partition_point(|&(_, end)| end.saturating_add(1) < uid);
        match self.ranges.get_mut(i) {
            Some(r) if r.0 <= uid.saturating_add(1) => {
                r.0 = r.0.min(uid);
                r.1 = r.1.max(uid);
                // Merge with the following range if they now touch.
                if let Some(&(next_start, next_end)) = self.ranges.get(i + 1) {
                    if next_start <= self.ranges[i].1.saturating_add(1) {
                        self.ranges[i].1 = self.ranges[i].1.max(next_end);
                        self.ranges.remove(i + 1);
                    }
                }
            }
            _ => self.ranges.insert(i, (uid, uid)),
        }
    }

    pub fn extend(&mut self, other: &UidSet) {
        for &(start, end) in &other.ranges {
            for uid in start..=end {
                self.insert(uid);
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|&(s, e)| u64::from(e - s) + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges.iter().flat_map(|&(s, e)| s..=e)
    }
}

impl FromIterator<u32> for UidSet {
    fn from_iter<I: IntoIterator<Item = u32>>(uids: I) -> Self {
        let mut set = UidSet::new();
        for uid in uids {
            set.insert(uid);
        }
        set
    }
}

impl fmt::Display for UidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(start, end)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}:{end}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for UidSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut set = UidSet::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let number = |n: &str| {
                n.parse::<u32>()
                    .map_err(|_| format!("bad UID {n:?} in {s:?}"))
            };
            let (start, end) = match part.split_once(':') {
                Some((a, b)) => (number(a)?, number(b)?),
                None => (number(part)?, number(part)?),
            };
            if start > end
                || set
                    .ranges
                    .last()
                    .is_some_and(|&(_, last)| last.saturating_add(1) >= start)
            {
                return Err(format!("UID ranges out of order in {s:?}"));
            }
            set.ranges.push((start, end));
        }
        Ok(set)
    }
}

impl serde::Serialize for UidSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for UidSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_merge_into_ranges() {
        let mut set = UidSet::new();
        for uid in [5, 1, 2, 3, 9, 4, 7] {
            set.insert(uid);
        }
        assert_eq!(set.to_string(), "1:5,7,9");
        set.insert(8);
        assert_eq!(set.to_string(), "1:5,7:9");
        set.insert(6);
        assert_eq!(set.to_string(), "1:9");
        assert_eq!(set.len(), 9);
        assert!(set.contains(1) && set.contains(9) && !set.contains(10) && !set.contains(0));
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let set: UidSet = "1:4000,4002,4010:4011".parse().unwrap();
        assert_eq!(set.len(), 4003);
        assert_eq!(set.to_string(), "1:4000,4002,4010:4011");
        assert!("5:3".parse::<UidSet>().is_err());
        assert!("3,2".parse::<UidSet>().is_err());
        assert!("x".parse::<UidSet>().is_err());
        assert_eq!("".parse::<UidSet>().unwrap(), UidSet::new());
    }

    #[test]
    fn matches_a_plain_set_on_random_input() {
        let mut seed = 12345u64;
        let mut set = UidSet::new();
        let mut reference = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let uid = (seed >> 33) as u32 % 300 + 1;
            set.insert(uid);
            reference.insert(uid);
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            reference.into_iter().collect::<Vec<_>>()
        );
        assert_eq!(set.to_string().parse::<UidSet>().unwrap(), set);
    }
}
