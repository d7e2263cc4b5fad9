//! Deterministic run names. A run's name is its Job's, so that two operator replicas, or
//! one restarted mid-way, arrive at the same name and the second `create` finds the Job
//! already there (and adopts it) instead of starting the run twice.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Longest run name. A Job's name must fit the 63-character label value
/// `batch.kubernetes.io/job-name`; the plan Secret adds [`PLAN_SUFFIX`], and pods add the
/// index and a random suffix (their host name is cut to 63 characters otherwise).
pub const MAX_RUN_NAME: usize = 52;

/// Appended to a run's name for its plan Secret.
pub const PLAN_SUFFIX: &str = "-plan";

/// The name of the run for a schedule slot: `<profile>-<yyyymmddhhmm>` (UTC, so that the
/// two 02:30 of a daylight-saving change differ).
pub fn scheduled(profile: &str, slot: DateTime<Utc>) -> String {
    with_suffix(profile, &slot.format("%Y%m%d%H%M").to_string())
}

/// The name of the run for a manual trigger value: `<profile>-m-<value>` when the value is
/// already a DNS label, else the value made one plus a hash of the original, so that
/// values differing only in case or punctuation get different runs.
pub fn manual(profile: &str, value: &str) -> String {
    let cleaned = dns_label(value);
    let suffix = if cleaned == value && !cleaned.is_empty() {
        format!("m-{cleaned}")
    } else {
        let hash = short_hash(value);
        if cleaned.is_empty() {
            format!("m-{hash}")
        } else {
            format!("m-{cleaned}-{hash}")
        }
    };
    // Long trigger values keep their start and a hash of the whole.
    let suffix = if suffix.len() > MAX_SUFFIX {
        let keep: String = suffix.chars().take(MAX_SUFFIX - 7).collect();
        format!("{}-{}", keep.trim_end_matches('-'), short_hash(value))
    } else {
        suffix
    };
    with_suffix(profile, &suffix)
}

/// Longest part of a run name after the profile's, so that the profile's name keeps at
/// least 19 characters.
const MAX_SUFFIX: usize = 32;

/// `<profile>-<suffix>`, the profile cut (and made unique with a hash) so that the whole
/// stays within [`MAX_RUN_NAME`].
fn with_suffix(profile: &str, suffix: &str) -> String {
    let profile = dns_label(profile);
    let room = MAX_RUN_NAME - suffix.len() - 1;
    if profile.len() <= room {
        return format!("{profile}-{suffix}");
    }
    let hash = short_hash(&profile);
    let cut = &profile[..room - hash.len() - 1];
    format!("{}-{hash}-{suffix}", cut.trim_end_matches('-'))
}

/// Lower-case letters, digits and single dashes, not starting or ending with a dash.
fn dns_label(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..3])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn scheduled_names_carry_the_slot_in_utc() {
        let slot = DateTime::parse_from_rfc3339("2025-03-02T02:00:00+01:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(scheduled("nightly", slot), "nightly-202503020100");
    }

    #[test]
    fn manual_names_come_from_the_trigger_value() {
        assert_eq!(manual("nightly", "ticket-42"), "nightly-m-ticket-42");
        // Not a DNS label as given: cleaned up, and a hash keeps "Ticket 42" and
        // "ticket-42" apart.
        let n = manual("nightly", "Ticket 42");
        assert!(n.starts_with("nightly-m-ticket-42-"), "{n}");
        assert_ne!(n, manual("nightly", "ticket-42"));
        assert_ne!(n, manual("nightly", "TICKET 42"));
        let n = manual("nightly", "2025-03-02T10:00:00Z");
        assert!(n.starts_with("nightly-m-2025-03-02t10-00-00z-"), "{n}");
        let n = manual("nightly", "!!!");
        assert!(is_dns_label(&n) && n.starts_with("nightly-m-"), "{n}");
        // Deterministic.
        assert_eq!(
            manual("nightly", "Ticket 42"),
            manual("nightly", "Ticket 42")
        );
    }

    #[test]
    fn names_stay_short_and_dns_safe_with_suffixes() {
        let long_profile = "a-very-long-profile-name-that-goes-on-and-on-and-on-forever";
        let long_value = "x".repeat(200);
        let slot = Utc::now();
        for name in [
            scheduled(long_profile, slot),
            manual(long_profile, &long_value),
            manual(
                long_profile,
                "Some value with spaces and UPPER case and more",
            ),
            manual("p", &long_value),
        ] {
            assert!(name.len() <= MAX_RUN_NAME, "{name} ({})", name.len());
            assert!(is_dns_label(&name), "{name}");
            let plan = format!("{name}{PLAN_SUFFIX}");
            assert!(is_dns_label(&plan), "{plan}");
        }
        // Two long profiles with the same start still differ.
        assert_ne!(
            scheduled(&format!("{long_profile}-one"), slot),
            scheduled(&format!("{long_profile}-two"), slot)
        );
    }
}
