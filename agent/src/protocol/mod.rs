//! Layer-7 parsing: pure functions over byte slices, no I/O, no aya.
pub mod hpack;
pub mod http1;
pub mod http2;
pub mod memcached;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod traceparent;
