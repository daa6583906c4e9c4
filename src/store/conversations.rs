//! What the appliance knows of each kf conversation (an account and a customer),
//! for the rules WeCom enforces on `kf/send_msg` (SPEC §10): when the customer
//! last wrote (48 hours), how many messages were sent since (5), and whether a
//! human has the session. The rules are decided here, purely; the engines read
//! and write the row in one transaction, so replicas never both take the last
//! message allowed.

use super::{backend, Store, StoreError};
use crate::channels::ChannelName;

/// The 48-hour window after a customer's last message.
pub(crate) const WINDOW_SECS: i64 = 48 * 3600;
/// Messages allowed per customer message.
pub(crate) const QUOTA: i64 = 5;

/// A kf conversation: the channel, the account and the customer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Customer {
    pub channel: ChannelName,
    pub open_kfid: String,
    pub external_userid: String,
}

/// Something seen that changes a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The customer wrote at `at` (their message's `send_time`): the window
    /// opens again and the count starts over.
    Wrote { at: i64 },
    /// A human has (or is being given) the session, since `at`.
    Human { at: i64 },
    /// The session ended: the bot may speak again.
    Ended,
}

/// The stored state of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conversation {
    /// Unix seconds of the customer's last message, when one was seen.
    pub last_customer_at: Option<i64>,
    /// Messages sent (or reserved) since then.
    pub sent_since: i64,
    /// Since when a human has the session.
    pub human_since: Option<i64>,
}

/// Why a send to a customer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A human has the session (since that time).
    Human { since: i64 },
    /// More than 48 hours since the customer's last message, or no message from
    /// them known at all (`None`): the appliance never heard from this customer on
    /// this account, so WeCom's window is closed as far as anyone here can tell.
    Window { last_customer_at: Option<i64> },
    /// The text's parts exceed what is left of the 5.
    Quota { parts: i64, remaining: i64 },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Human { .. } => {
                f.write_str("the session is with a human servicer (service state 2 or 3) until it ends")
            }
            Self::Window { last_customer_at: Some(_) } => {
                f.write_str("more than 48 hours since the customer's last message")
            }
            Self::Window { last_customer_at: None } => f.write_str(
                "no message from this customer to this kf account is known within the last 48 hours (WeCom allows replies only then)",
            ),
            Self::Quota { parts, remaining } => write!(
                f,
                "5 messages per customer message: {remaining} left since the customer's last message, this text needs {parts}"
            ),
        }
    }
}

/// The answer to "may `parts` messages go to this customer now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Yes; they are counted.
    Allowed,
    Refused(Refusal),
}

impl Conversation {
    /// Applies what was seen.
    pub fn observe(&mut self, observation: Observation) {
        match observation {
            Observation::Wrote { at } => {
                if self.last_customer_at.is_none_or(|last| at >= last) {
                    self.last_customer_at = Some(at);
                    self.sent_since = 0;
                }
            }
            Observation::Human { at } => {
                self.human_since.get_or_insert(at);
            }
            Observation::Ended => self.human_since = None,
        }
    }

    /// Whether `parts` messages may go out at `now`; `handover` texts (the one
    /// that announces a human) pass a human's session. Counts them when allowed.
    pub fn reserve(&mut self, parts: i64, now: i64, handover: bool) -> Verdict {
        if let (Some(since), false) = (self.human_since, handover) {
            return Verdict::Refused(Refusal::Human { since });
        }
        match self.last_customer_at {
            Some(last) if now - last <= WINDOW_SECS => {}
            last_customer_at => return Verdict::Refused(Refusal::Window { last_customer_at }),
        }
        let remaining = (QUOTA - self.sent_since).max(0);
        if parts > remaining {
            return Verdict::Refused(Refusal::Quota { parts, remaining });
        }
        self.sent_since += parts;
        Verdict::Allowed
    }
}

/// One change the engines make to a stored conversation, in a transaction with
/// the row read (and on PostgreSQL locked): how both engines apply the rules.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change {
    Observe(Observation),
    /// [`Conversation::reserve`] at `now`.
    Reserve {
        parts: i64,
        now: i64,
        handover: bool,
    },
}

impl Change {
    /// Applies the change to `conversation`: [`Verdict::Allowed`] (for an
    /// observation always) means the row is to be written.
    pub(super) fn apply(self, conversation: &mut Conversation) -> Verdict {
        match self {
            Self::Observe(observation) => {
                conversation.observe(observation);
                Verdict::Allowed
            }
            Self::Reserve { parts, now, handover } => conversation.reserve(parts, now, handover),
        }
    }
}

impl Store {
    /// Applies observations, in order.
    pub async fn observe_kf(&self, observations: Vec<(Customer, Observation)>) -> Result<(), StoreError> {
        if observations.is_empty() {
            return Ok(());
        }
        let changes = observations.into_iter().map(|(customer, seen)| (customer, Change::Observe(seen))).collect();
        backend!(self, b => b.change_kf_conversations(changes).await).map(drop)
    }

    /// Decides (and counts) `parts` messages to `customer` at `now`, in one
    /// transaction. A conversation never seen is [`Conversation::default`]: no
    /// customer message known, so [`Refusal::Window`] (SPEC §15: the kf rules
    /// hold for strangers too, and WeCom is not asked).
    pub async fn reserve_kf_sends(
        &self,
        customer: Customer,
        parts: i64,
        now: i64,
        handover: bool,
    ) -> Result<Verdict, StoreError> {
        let reservation = vec![(customer, Change::Reserve { parts, now, handover })];
        backend!(self, b => b.change_kf_conversations(reservation).await)
    }

    pub async fn kf_conversation(&self, customer: Customer) -> Result<Option<Conversation>, StoreError> {
        backend!(self, b => b.kf_conversation(customer).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_messages_per_customer_message_within_48_hours() {
        let mut c = Conversation::default();
        assert_eq!(c.reserve(1, 100, false), Verdict::Refused(Refusal::Window { last_customer_at: None }));
        c.observe(Observation::Wrote { at: 100 });
        assert_eq!(c.reserve(3, 100, false), Verdict::Allowed);
        assert_eq!(c.reserve(3, 101, false), Verdict::Refused(Refusal::Quota { parts: 3, remaining: 2 }));
        assert_eq!(c.reserve(2, 101, false), Verdict::Allowed);
        assert_eq!(c.reserve(1, 102, false), Verdict::Refused(Refusal::Quota { parts: 1, remaining: 0 }));
        // An older message (delivered late) changes nothing; a newer one starts over.
        c.observe(Observation::Wrote { at: 50 });
        assert_eq!(c.sent_since, 5);
        c.observe(Observation::Wrote { at: 200 });
        assert_eq!(c.reserve(5, 200 + WINDOW_SECS, false), Verdict::Allowed);
        assert_eq!(
            c.reserve(1, 201 + WINDOW_SECS, false),
            Verdict::Refused(Refusal::Window { last_customer_at: Some(200) })
        );
    }

    #[test]
    fn a_human_session_silences_all_but_the_handover_text_until_it_ends() {
        let mut c = Conversation::default();
        c.observe(Observation::Wrote { at: 10 });
        c.observe(Observation::Human { at: 11 });
        c.observe(Observation::Human { at: 12 });
        assert_eq!(c.reserve(1, 12, false), Verdict::Refused(Refusal::Human { since: 11 }));
        assert_eq!(c.reserve(1, 12, true), Verdict::Allowed);
        c.observe(Observation::Ended);
        assert_eq!(c.reserve(1, 13, false), Verdict::Allowed);
    }

    #[test]
    fn an_observation_is_always_written_and_a_reservation_only_when_allowed() {
        let mut c = Conversation::default();
        assert_eq!(
            Change::Reserve { parts: 1, now: 5, handover: false }.apply(&mut c),
            Verdict::Refused(Refusal::Window { last_customer_at: None })
        );
        assert_eq!(Change::Observe(Observation::Wrote { at: 5 }).apply(&mut c), Verdict::Allowed);
        assert_eq!(Change::Reserve { parts: 2, now: 6, handover: false }.apply(&mut c), Verdict::Allowed);
        assert_eq!(c.sent_since, 2);
    }

    #[test]
    fn refusals_say_what_is_left() {
        assert!(Refusal::Quota { parts: 3, remaining: 1 }.to_string().contains("1 left"));
        assert!(Refusal::Human { since: 0 }.to_string().contains("human"));
    }
}
