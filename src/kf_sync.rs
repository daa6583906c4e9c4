//! The kf syncer: pulls WeChat Customer Service messages with `kf/sync_msg`.
//!
//! A `kf_msg_or_event` notice only says "there is something": the dispatcher hands
//! `(open_kfid, token)` to [`KfSyncHandle::request`], and this task, never the
//! callback request, pulls. Requests for the same account coalesce (the newest
//! Token wins); accounts sync one at a time. Each page's messages and its
//! `next_cursor` are stored in one transaction, so a restart resumes exactly where
//! the last stored page ended: nothing skipped, nothing handled twice (messages
//! are journaled by msgid and handled from the journal).
//!
//! Deliberately not here: what a message means (the dispatcher's job).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::channels::ChannelName;
use crate::messages::kf::KfMessage;
use crate::messages::{dedup_key, Identity, LoggedId};
use crate::store::journal::{EntryKind, NewEntry};
use crate::store::kf::KfAccount;
use crate::store::Store;
use crate::wecom::{ApiError, WeCom};

/// How long to wait before asking again for an account another owner was syncing.
const BUSY_RETRY: Duration = Duration::from_secs(2);
/// Failed pages before an account is left until its next notice.
const MAX_FAILURES: u32 = 6;
/// Between failed pages: 2, 4 … 64 s.
const RETRY: Backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(64));

/// Asks the syncer to pull one account.
#[derive(Debug, Clone)]
pub(crate) struct KfSyncHandle {
    sender: mpsc::UnboundedSender<(KfAccount, Option<String>)>,
}

impl KfSyncHandle {
    /// Schedules a sync of `open_kfid` with the notice's `token` (valid 10 min).
    pub(crate) fn request(&self, channel: ChannelName, open_kfid: String, token: Option<String>) {
        // The syncer only stops at shutdown; a request after that has nowhere to go.
        let _ = self.sender.send((KfAccount { channel, open_kfid }, token));
    }
}

/// The background task.
pub(crate) struct KfSyncer {
    store: Store,
    wecom: Arc<WeCom>,
    journal_wake: Arc<Notify>,
    requests: mpsc::UnboundedReceiver<(KfAccount, Option<String>)>,
}

impl KfSyncer {
    pub(crate) fn new(store: Store, wecom: Arc<WeCom>, journal_wake: Arc<Notify>) -> (Self, KfSyncHandle) {
        let (sender, requests) = mpsc::unbounded_channel();
        (Self { store, wecom, journal_wake, requests }, KfSyncHandle { sender })
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        // Accounts synced before: pull once now, in case a notice was lost in a crash.
        // No Token: allowed, under a stricter rate limit. Each account is resumed on
        // the channel whose cursor the store holds.
        let mut pending: BTreeMap<KfAccount, Option<String>> = match self.store.kf_accounts().await {
            Ok(accounts) => accounts.into_iter().map(|a| (a, None)).collect(),
            Err(error) => {
                tracing::error!("kf sync: cannot read stored accounts: {error}");
                BTreeMap::new()
            }
        };
        // Accounts another owner was syncing: asked again once its turn may be over.
        let mut deferred: BTreeMap<KfAccount, Option<String>> = BTreeMap::new();
        let mut retry_at = None;
        loop {
            while let Ok((account, token)) = self.requests.try_recv() {
                coalesce(&mut pending, account, token);
            }
            if retry_at.is_some_and(|at| Instant::now() >= at) {
                retry_at = None;
                for (account, token) in std::mem::take(&mut deferred) {
                    coalesce(&mut pending, account, token);
                }
            }
            let Some((account, token)) = pending.pop_first() else {
                let retry = async {
                    match retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = retry => {}
                    request = self.requests.recv() => match request {
                        Some((account, token)) => coalesce(&mut pending, account, token),
                        None => return,
                    },
                }
                continue;
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                synced = self.sync_account(&account, token.clone()) => if synced == Sync::Busy {
                    // Its owner may already be past the page this notice is about: ask again.
                    coalesce(&mut deferred, account, token);
                    retry_at.get_or_insert_with(|| Instant::now() + BUSY_RETRY);
                },
            }
        }
    }

    /// Pulls every page of one account, under its claim.
    pub(crate) async fn sync_account(&self, account: &KfAccount, mut token: Option<String>) -> Sync {
        let (channel, open_kfid) = (&account.channel, account.open_kfid.as_str());
        if let Err(error) = self.wecom.tokens(channel) {
            tracing::error!(open_kfid = %LoggedId(open_kfid), "kf sync impossible: {error}");
            return Sync::Done;
        }
        let mut claim = match self.store.claim_kf_account(account.clone()).await {
            Ok(Some(claim)) => claim,
            Ok(None) => {
                tracing::debug!(open_kfid = %LoggedId(open_kfid), "kf sync: another owner is syncing this account");
                return Sync::Busy;
            }
            Err(error) => {
                tracing::error!(open_kfid = %LoggedId(open_kfid), "kf sync: cannot claim the account: {error}");
                return Sync::Done;
            }
        };
        let mut failures = 0u32;
        let mut pages = 0u32;
        loop {
            let page = match self.wecom.kf_sync_page(channel, open_kfid, claim.cursor.clone(), token.clone()).await {
                Ok(page) => page,
                Err(error) if token.is_some() && error.is(ApiError::is_sync_token_refused) => {
                    tracing::info!(open_kfid = %LoggedId(open_kfid), "kf sync Token refused ({error}); continuing without it");
                    token = None;
                    continue;
                }
                Err(error) => {
                    failures += 1;
                    if failures >= MAX_FAILURES {
                        tracing::error!(open_kfid = %LoggedId(open_kfid), "kf sync gave up after {failures} failures (the next notice retries from the stored cursor): {error}");
                        break;
                    }
                    let delay = RETRY.delay(failures);
                    tracing::warn!(open_kfid = %LoggedId(open_kfid), retry_in_secs = delay.as_secs(), "kf sync failed: {error}");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            failures = 0;
            pages += 1;
            let entries: Vec<NewEntry> =
                page.msg_list.into_iter().filter_map(|raw| journal_entry(channel, open_kfid, raw)).collect();
            let received = entries.len();
            match self.store.kf_store_page(&mut claim, entries, page.next_cursor).await {
                Ok(new) => {
                    tracing::debug!(open_kfid = %LoggedId(open_kfid), page = pages, received, new, "kf page stored");
                    if new > 0 {
                        self.journal_wake.notify_one();
                    }
                }
                Err(error) => {
                    // The lease was taken over, or the store failed: whoever syncs next
                    // starts from the stored cursor, so the page is pulled again.
                    tracing::error!(open_kfid = %LoggedId(open_kfid), "kf sync: cannot store a page (it will be pulled again): {error}");
                    return Sync::Done;
                }
            }
            // Page on while WeCom says there is more, even through empty pages.
            if page.has_more != 1 {
                break;
            }
        }
        if let Err(error) = self.store.release_kf_account(claim).await {
            tracing::warn!(open_kfid = %LoggedId(open_kfid), "kf sync: cannot release the account (its lease runs out by itself): {error}");
        }
        Sync::Done
    }
}

/// How a sync of one account ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// Pulled (or gave up until the next notice).
    Done,
    /// Another owner holds the account's lease.
    Busy,
}

/// Keeps one request per account; a Token replaces none or an older one.
fn coalesce<A: Ord>(pending: &mut BTreeMap<A, Option<String>>, account: A, token: Option<String>) {
    let slot = pending.entry(account).or_insert(None);
    if token.is_some() {
        *slot = token;
    }
}

/// The journal entry of one `msg_list` element; `None` (logged) when it has no msgid.
fn journal_entry(channel: &ChannelName, open_kfid: &str, raw: serde_json::Value) -> Option<NewEntry> {
    match KfMessage::parse(raw) {
        Ok(message) => Some(NewEntry {
            dedup_key: dedup_key(channel, Identity::MsgId(&message.msgid)),
            channel: channel.clone(),
            kind: EntryKind::KfMessage,
            sender: message.external_userid.clone(),
            payload: message.raw.to_string(),
            parsed: None,
        }),
        Err(error) => {
            tracing::warn!(open_kfid = %LoggedId(open_kfid), "skipping a kf message: {error}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_coalesce_and_keep_the_newest_token() {
        let mut pending: BTreeMap<String, Option<String>> = BTreeMap::new();
        coalesce(&mut pending, "wkA".into(), Some("T1".into()));
        coalesce(&mut pending, "wkA".into(), None);
        coalesce(&mut pending, "wkA".into(), Some("T2".into()));
        coalesce(&mut pending, "wkB".into(), None);
        assert_eq!(pending.len(), 2);
        assert_eq!(pending["wkA"].as_deref(), Some("T2"));
        assert_eq!(pending["wkB"], None);
    }
}
