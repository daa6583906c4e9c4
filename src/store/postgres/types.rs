//! How the domain's types are PostgreSQL values: a [`ChannelName`] is bound
//! and read as `text`, so no row of the store carries a channel as a bare
//! string. A stored name that is no longer a valid one reads as an error.

use bytes::BytesMut;
use tokio_postgres::types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};

use crate::channels::ChannelName;

type BoxedError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for ChannelName {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxedError> {
        self.as_str().to_sql(ty, out)
    }

    accepts!(TEXT, VARCHAR);
    to_sql_checked!();
}

impl<'a> FromSql<'a> for ChannelName {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxedError> {
        ChannelName::parse(<&str>::from_sql(ty, raw)?).map_err(Into::into)
    }

    accepts!(TEXT, VARCHAR);
}
