//! Times as Kubernetes writes them and as the protocols and statuses carry them: RFC 3339
//! in UTC, to the second.

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// `t` as RFC 3339 to the second (`2025-01-06T02:00:00Z`).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The current time as RFC 3339 to the second.
pub fn now() -> String {
    rfc3339(Utc::now())
}

/// An RFC 3339 time in any offset, as UTC.
pub fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A Kubernetes timestamp.
pub fn from_k8s(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_to_the_second() {
        let t = parse("2025-03-02T02:00:00.750+01:00").unwrap();
        assert_eq!(rfc3339(t), "2025-03-02T01:00:00Z");
        let k8s = Time("2025-03-02T01:00:00Z".parse().unwrap());
        assert_eq!(rfc3339(from_k8s(&k8s)), "2025-03-02T01:00:00Z");
        assert_eq!(parse("yesterday"), None);
        assert!(parse(&now()).is_some());
    }
}
