//! The span record: what the correlator produces and every exporter consumes.

/// Span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An incoming request (the process is the server).
    Server,
    /// An outgoing request (the process is the client).
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// String: borrowed where it is a constant (method names, "http", "1.1"), which saves a
    /// few allocations per span.
    Str(std::borrow::Cow<'static, str>),
    /// Integer.
    Int(i64),
}

/// How a client span found its parent (`tracewire.link`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not a client span, or the trace came from the request's own `traceparent`.
    None,
    /// Child of the server span the same thread was serving.
    Thread,
    /// Child of the server span the calling goroutine was serving (Go, followed by uprobes).
    Goroutine,
    /// Child of the client request nginx opened the upstream connection for (uprobes).
    Upstream,
    /// The parent could not be decided; the span is a root of its own trace.
    Unlinked,
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// Span id.
    pub span_id: [u8; 8],
    /// Parent span id, if any.
    pub parent_id: Option<[u8; 8]>,
    /// The parent is in another process (came in a `traceparent` header).
    pub parent_remote: bool,
    /// W3C trace flags.
    pub flags: u8,
    /// `tracestate` carried with the parent.
    pub trace_state: Option<String>,
    /// Kind.
    pub kind: Kind,
    /// Span name.
    pub name: String,
    /// Wall-clock start, ns since the Unix epoch.
    pub start_ns: u64,
    /// Wall-clock end.
    pub end_ns: u64,
    /// Process that handled or made the request.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Status: true when the span is an error.
    pub error: bool,
    /// Attributes (semantic-convention keys).
    pub attributes: Vec<(&'static str, Value)>,
    /// How a client span was linked.
    pub link: Link,
    /// Span links: the requests an unlinked client span may have been made for (trace id,
    /// span id), so a person can still navigate from it.
    pub links: Vec<([u8; 16], [u8; 8])>,
}

impl SpanRecord {
    /// The attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Duration in ns.
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
