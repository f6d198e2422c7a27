//! Hook families: connection lifecycle (`conn`), bytes on connections (`data`), the trace
//! context of each request (`context`), its propagation in TCP options (`tcpopt`), processes
//! (`proc`), opt-in `traceparent` injection (`inject`), and Go's goroutines (`golang`).
mod conn;
mod context;
mod data;
mod golang;
mod inject;
mod proc;
mod tcpopt;
