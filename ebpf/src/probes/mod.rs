//! Hook families: connection lifecycle (`conn`), bytes on connections (`data`), the trace
//! context of each request (`context`), its propagation in TCP options (`tcpopt`), processes
//! (`proc`), and opt-in `traceparent` injection (`inject`).
mod conn;
mod context;
mod data;
mod inject;
mod proc;
mod tcpopt;
