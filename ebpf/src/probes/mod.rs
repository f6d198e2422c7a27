//! Hook families: connection lifecycle (`conn`), bytes on connections (`data`), the trace
//! context of each request (`context`), its propagation in TCP options (`tcpopt`), processes
//! (`proc`), opt-in `traceparent` injection (`inject`), and the runtimes whose threads serve
//! many requests: Go's goroutines (`golang`) and nginx's upstreams (`nginx`); and the plaintext
//! of TLS connections, from their library: OpenSSL's API (`tls`), Go's `crypto/tls` (`gotls`).
mod conn;
mod context;
mod data;
mod golang;
mod gotls;
mod inject;
mod nginx;
mod proc;
mod tcpopt;
mod tls;
