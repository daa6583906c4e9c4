//! The one door for `tests/` and `benches/`: everything they reach of the crate,
//! re-exported here under the module it lives in (`testing::store::Store`), and
//! nothing else. Compiled only with the `testing` feature, which the crate's own
//! dev-dependency on itself turns on, so the shipped binary has no public API
//! beyond `cli` and `commands` and the compiler finds every dead item in it.
//! Test hooks of a running application (its store, liveness, check clock, fault
//! injection) are `#[cfg(feature = "testing")]` items of their owners, reached
//! through these types.
//!
//! Deliberately not here: any logic. A test that needs more of the crate adds a
//! re-export here, and the item it names becomes `pub`.

pub mod callback {
    pub use crate::callback::{CallbackCredentials, CallbackError, CallbackQuery, OpenedAibot};
}

pub mod channels {
    pub use crate::channels::{ChannelKind, ChannelName};
}

pub mod config {
    pub use crate::config::layering::{Sources, CONFIG_FILE_VARIABLE};
    pub use crate::config::secret::{Secret, Token};
    pub use crate::config::variables::{Var, VARIABLES};
    pub use crate::config::{load, CallbackKeys, Config};
}

pub mod crypto {
    pub use crate::crypto::{
        decrypt, decrypt_media, encrypt, encrypt_media, encrypt_with_random, sign, AesKey, DecryptError,
    };
}

pub mod dispatch {
    pub use crate::dispatch::executor::signature;
    pub use crate::dispatch::handlers::HELP_TEXT;
}

pub mod health {
    pub use crate::health::checks::CheckClock;
    pub use crate::health::Liveness;
}

pub mod messages {
    pub use crate::messages::kf::KfMessage;
    pub use crate::messages::{AppEvent, AppMessage, AppMessageKind, CallbackEnvelope};
}

pub mod routes {
    pub use crate::routes::callback::MAX_BODY_BYTES;
    pub use crate::routes::CALLBACK_PATHS;
}

pub mod shaping {
    pub use crate::shaping::{flatten_markdown, shape, split, MAX_PART_BYTES};
}

pub mod streams {
    pub use crate::streams::{shown, stream_id, StreamRow, Update, UpdateError};
}

pub mod startup {
    pub use crate::startup::Application;
}

pub mod store {
    pub use crate::store::aibot::AnswerKey;
    pub use crate::store::alerts::FiringRecord;
    pub use crate::store::conversations::{Customer, Observation, Refusal, Verdict};
    pub use crate::store::journal::{EntryKind, NewEntry, Recorded};
    pub use crate::store::kf::KfAccount;
    pub use crate::store::names::{CachedName, NameKey};
    pub use crate::store::outbox::{DueAction, NewAction};
    pub use crate::store::sends::{KfMsgid, NewSend, Queued, SendStatus, SendUpdate};
    pub use crate::store::tokens::StoredToken;
    pub use crate::store::{now, Store, StoreError, DATABASE_FILE, DEFAULT_LEASE, POSTGRES_SCHEMA_VERSION};
    pub use crate::streams::StreamOpen;
}

pub mod telemetry {
    pub use crate::telemetry::{BuildInfo, Metrics};
}

pub mod tls {
    pub use crate::tls::{install_crypto_provider, load_certificate, self_signed, AnyServerCertificate};
}

pub mod wecom {
    pub use crate::wecom::aibot::{encrypted_answer, stream_answer, AibotKind};
    pub use crate::wecom::error::WeComError;
    pub use crate::wecom::models::KfSyncPage;
    pub use crate::wecom::{TokenSource, WeComClient};
}
