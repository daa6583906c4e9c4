//! kf conversations in PostgreSQL: read and written in one transaction, the row
//! locked, so replicas never both take the last message allowed.

use deadpool_postgres::GenericClient;

use super::{Postgres, EPOCH};
use crate::store::conversations::{Change, Conversation, Customer, Verdict};
use crate::store::StoreError;

async fn select(
    client: &impl GenericClient,
    customer: &Customer,
    lock: bool,
) -> Result<Option<Conversation>, StoreError> {
    let sql = format!(
        "SELECT last_customer_at, sent_since, human_since FROM kf_conversations
         WHERE channel = $1 AND open_kfid = $2 AND external_userid = $3{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    let statement = client.prepare_cached(&sql).await?;
    let row =
        client.query_opt(&statement, &[&customer.channel, &customer.open_kfid, &customer.external_userid]).await?;
    Ok(row.map(|row| Conversation { last_customer_at: row.get(0), sent_since: row.get(1), human_since: row.get(2) }))
}

pub(super) async fn upsert(
    client: &impl GenericClient,
    customer: &Customer,
    c: &Conversation,
) -> Result<(), StoreError> {
    let statement = client
        .prepare_cached(&format!(
            "INSERT INTO kf_conversations
             (channel, open_kfid, external_userid, last_customer_at, sent_since, human_since, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, {EPOCH})
             ON CONFLICT (channel, open_kfid, external_userid) DO UPDATE SET last_customer_at = excluded.last_customer_at,
             sent_since = excluded.sent_since, human_since = excluded.human_since, updated_at = excluded.updated_at"
        ))
        .await?;
    client
        .execute(
            &statement,
            &[
                &customer.channel,
                &customer.open_kfid,
                &customer.external_userid,
                &c.last_customer_at,
                &c.sent_since,
                &c.human_since,
            ],
        )
        .await?;
    Ok(())
}

impl Postgres {
    /// Applies `changes` in order, each to its row read and locked, in one
    /// transaction; the last one's verdict.
    pub(in crate::store) async fn change_kf_conversations(
        &self,
        changes: Vec<(Customer, Change)>,
    ) -> Result<Verdict, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut verdict = Verdict::Allowed;
        for (customer, change) in &changes {
            // A row that does not exist yet cannot be locked: two replicas may both
            // insert it; the upsert keeps one, and the next observation corrects it.
            let mut conversation = select(&tx, customer, true).await?.unwrap_or_default();
            verdict = change.apply(&mut conversation);
            if verdict == Verdict::Allowed {
                upsert(&tx, customer, &conversation).await?;
            }
        }
        tx.commit().await?;
        self.committed(1);
        Ok(verdict)
    }

    pub(in crate::store) async fn kf_conversation(
        &self,
        customer: Customer,
    ) -> Result<Option<Conversation>, StoreError> {
        let client = self.client().await?;
        select(&client, &customer, false).await
    }
}
