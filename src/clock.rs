//! Time as the service reports it to people: health results, recent alerts.
//!
//! Deliberately not here: the store's clock (`store::now`, and PostgreSQL's own
//! `now()` for leases), which decides claims and retention.

/// Now as RFC 3339 UTC to the second, e.g. `2026-11-21T06:25:33Z`.
pub(crate) fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    // RFC 3339 formats every UTC time from year 0 to 9999; the fallback is never used.
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| now.unix_timestamp().to_string())
}
