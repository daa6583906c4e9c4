//! How the domain's types are SQLite values: a [`ChannelName`] is bound and
//! read as itself, so no row of the store carries a channel as a bare string.
//! A stored name that is no longer a valid one reads as a conversion error.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::ToSql;

use crate::channels::ChannelName;

impl ToSql for ChannelName {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ChannelName {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        ChannelName::parse(value.as_str()?).map_err(|reason| FromSqlError::Other(reason.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_name_is_stored_as_its_text_and_a_bad_one_is_an_error() {
        let db = rusqlite::Connection::open_in_memory().expect("db");
        let read: ChannelName = db.query_row("SELECT ?1", [ChannelName::kf()], |row| row.get(0)).expect("read");
        assert_eq!(read, ChannelName::kf());
        let text: String = db.query_row("SELECT ?1", [ChannelName::app()], |row| row.get(0)).expect("text");
        assert_eq!(text, "app");
        assert!(db.query_row("SELECT 'no such/name'", [], |row| row.get::<_, ChannelName>(0)).is_err());
    }
}
