//! Housekeeping: the pruning task. Once at start-up and then every tenth of
//! `RETENTION_SECS`, whichever replica holds the `housekeeping` lease prunes for the
//! cluster (`Store::prune`), and the counts go to `wechat_api_store_pruned_total`.
//! Every replica also prunes downloaded media older than `MEDIA_RETENTION_SECS`
//! in its own `UPLOAD_DIR` (not under the lease: uploads may be per replica, and
//! removing an old file twice is harmless), counted in
//! `wechat_api_media_pruned_total`.
//!
//! Deliberately not here: what pruning deletes and keeps (`store::retention`,
//! `media::prune`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::store::retention::Pruned;
use crate::store::{now, Store};
use crate::telemetry::Metrics;

/// The lease under which one owner prunes for the whole cluster.
const HOUSEKEEPING: &str = "housekeeping";

/// How often to prune: a tenth of the retention, between 10 s and 10 min.
fn period(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(10), Duration::from_secs(600))
}

/// Downloaded media and how long they are kept (`MEDIA_RETENTION_SECS`).
#[derive(Debug, Clone)]
pub(crate) struct MediaRetention {
    pub upload_dir: PathBuf,
    pub keep: Duration,
}

/// The pruning task: once at start-up, then every [`period`] (of the shorter
/// retention), until `shutdown`.
pub(crate) async fn run(
    store: Store,
    retention: Duration,
    media: Option<MediaRetention>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let journal = metrics.counter(crate::telemetry::STORE_PRUNED_TOTAL, &[("table", "journal".into())]);
    let outbox = metrics.counter(crate::telemetry::STORE_PRUNED_TOTAL, &[("table", "outbox".into())]);
    let replies = metrics.counter(crate::telemetry::STORE_PRUNED_TOTAL, &[("table", "sends".into())]);
    let every = media.as_ref().map_or(period(retention), |m| period(retention).min(period(m.keep)));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(media) = &media {
            prune_media(media, &metrics).await;
        }
        // Housekeeping once for the cluster: whoever holds the lease prunes.
        let lease = match store.claim_lease(HOUSEKEEPING.to_owned()).await {
            Ok(Some(lease)) => lease,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!("store: cannot claim housekeeping, will retry: {error}");
                continue;
            }
        };
        let cutoff = now().saturating_sub(retention.as_secs().try_into().unwrap_or(i64::MAX));
        let pruned = store.prune(cutoff).await;
        // A conversation forgotten is a customer never heard from, whose sends are
        // refused (SPEC §15): kept for WeCom's 48-hour window whatever the retention.
        let replies_cutoff = cutoff.min(now().saturating_sub(crate::store::conversations::WINDOW_SECS));
        match store.prune_replies(replies_cutoff).await {
            Ok(deleted) => replies.increment(deleted),
            Err(error) => tracing::warn!("store: pruning sends failed, will retry: {error}"),
        }
        if let Err(error) = store.release_lease(lease).await {
            tracing::debug!("store: housekeeping lease not released (it runs out by itself): {error}");
        }
        match pruned {
            Ok(pruned) => {
                journal.increment(pruned.journal);
                outbox.increment(pruned.outbox);
                if pruned != Pruned::default() {
                    tracing::info!(
                        journal = pruned.journal,
                        outbox = pruned.outbox,
                        "store: pruned entries past retention"
                    );
                }
            }
            Err(error) => tracing::warn!("store: pruning failed, will retry: {error}"),
        }
    }
}

/// Removes this replica's media older than their retention, and counts them.
async fn prune_media(media: &MediaRetention, metrics: &Metrics) {
    let (upload_dir, keep) = (media.upload_dir.clone(), media.keep);
    let pruned = tokio::task::spawn_blocking(move || {
        let cutoff = SystemTime::now().checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
        crate::media::prune(&upload_dir, cutoff, time::OffsetDateTime::now_utc().date())
    })
    .await;
    match pruned {
        Ok(pruned) => {
            let count = |kind: &str, n: u64| {
                metrics.counter(crate::telemetry::MEDIA_PRUNED_TOTAL, &[("kind", kind.to_owned())]).increment(n);
            };
            count("file", pruned.files);
            count("directory", pruned.directories);
            if pruned.files + pruned.directories > 0 {
                tracing::info!(
                    files = pruned.files,
                    directories = pruned.directories,
                    "media: pruned past MEDIA_RETENTION_SECS"
                );
            }
        }
        Err(error) => tracing::warn!("media: pruning failed, will retry: {error}"),
    }
}
