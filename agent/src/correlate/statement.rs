//! A SQL statement as database client spans show it (PostgreSQL's and MySQL's).
use std::sync::Arc;

use super::span::Value;
use crate::protocol::sql;

/// A statement as spans show it, made once and shared by every execution of it (a prepared
/// statement runs many times): its strings are shared, not copied, into each span.
#[derive(Debug)]
pub(super) struct Statement {
    pub(super) text: Arc<str>,
    pub(super) operation: Option<Arc<str>>,
    pub(super) collection: Option<Arc<str>>,
    /// `{operation} {table}`, or the operation (None: neither is known).
    pub(super) name: Option<Arc<str>>,
}

impl Statement {
    /// `text` sanitized by `dialect`'s rules, and named.
    pub(super) fn parse(text: &[u8], dialect: sql::Dialect) -> Arc<Statement> {
        let q = sql::sanitize_as(text, dialect);
        let name = match (&q.operation, &q.collection) {
            (Some(o), Some(c)) => Some(format!("{o} {c}").into()),
            (Some(o), None) => Some(o.as_str().into()),
            _ => None,
        };
        Arc::new(Statement {
            text: q.text.into(),
            operation: q.operation.map(Into::into),
            collection: q.collection.map(Into::into),
            name,
        })
    }

    /// `db.operation.name`, `db.collection.name` (when known) and `db.query.text`.
    pub(super) fn push_attrs(&self, attrs: &mut Vec<(&'static str, Value)>) {
        let shared = |t: &Arc<str>| Value::Str(t.clone().into());
        if let Some(o) = &self.operation {
            attrs.push(("db.operation.name", shared(o)));
        }
        if let Some(c) = &self.collection {
            attrs.push(("db.collection.name", shared(c)));
        }
        attrs.push(("db.query.text", shared(&self.text)));
    }
}
