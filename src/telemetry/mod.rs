//! What the service reports about itself, set up in one place: [`logs`] (the
//! tracing subscriber and its one-line escaping) apart from [`metrics`] (the one
//! table of metric families, the recorder, the latency window).
//!
//! A foundation: it imports nothing of the domain (`callback`, `messages`,
//! `dispatch`, …). The domain names its labels' values and passes them as
//! strings; the callback pipeline's own counting is `callback_metrics.rs`.

pub(crate) mod logs;
pub(crate) mod metrics;

pub(crate) use self::logs::init_tracing;
pub(crate) use self::metrics::*;
pub use self::metrics::{BuildInfo, Metrics};
