//! Time as the service reports it to people: health results, recent alerts.
//!
//! Deliberately not here: the store's clock (`store::now`, and PostgreSQL's own
//! `now()` for leases), which decides claims and retention.

/// Now as RFC 3339 UTC to the second, e.g. `2026-11-21T06:25:33Z`.
pub(crate) fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc().unix_timestamp())
}

/// Unix seconds as RFC 3339 UTC, e.g. `2026-11-21T06:25:33Z`: the one way a time
/// is written for people (health, alerts, emails, the status page).
pub(crate) fn rfc3339(unix: i64) -> String {
    // RFC 3339 formats every UTC time from year 0 to 9999; the fallback (the
    // number itself) is for a time outside them, which no clock gives.
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_seconds_are_written_as_rfc3339_utc() {
        assert_eq!(super::rfc3339(1_763_706_333), "2025-11-21T06:25:33Z");
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
