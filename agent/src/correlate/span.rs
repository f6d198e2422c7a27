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
    /// String.
    Str(Text),
    /// Integer.
    Int(i64),
}

/// A string in a span: a constant (method names, "http", "1.1"), text of this request, or text
/// shared by every span of a connection (its peer's address). Constants and shared text cost no
/// allocation per span.
#[derive(Clone)]
pub enum Text {
    /// A constant.
    Static(&'static str),
    /// This span's own.
    Owned(String),
    /// Shared with the connection.
    Shared(std::sync::Arc<str>),
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Owned(s) => s,
            Text::Shared(s) => s,
        }
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&**self, f)
    }
}

/// Equal by content, however stored.
impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Owned(s)
    }
}

impl From<std::borrow::Cow<'static, str>> for Text {
    fn from(s: std::borrow::Cow<'static, str>) -> Self {
        match s {
            std::borrow::Cow::Borrowed(s) => Text::Static(s),
            std::borrow::Cow::Owned(s) => Text::Owned(s),
        }
    }
}

impl From<std::sync::Arc<str>> for Text {
    fn from(s: std::sync::Arc<str>) -> Self {
        Text::Shared(s)
    }
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
    pub name: Text,
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

    /// A server span `GET` of pid 1 in trace `trace_id`, from 0 to 1 ns, for tests to adjust.
    #[cfg(test)]
    pub(crate) fn for_test(trace_id: [u8; 16], span_id: u8, parent: Option<u8>) -> SpanRecord {
        SpanRecord {
            trace_id,
            span_id: [span_id; 8],
            parent_id: parent.map(|p| [p; 8]),
            parent_remote: false,
            flags: 1,
            trace_state: None,
            kind: Kind::Server,
            name: "GET".into(),
            start_ns: 0,
            end_ns: 1,
            pid: 1,
            tid: 1,
            error: false,
            attributes: Vec::new(),
            link: Link::None,
            links: Vec::new(),
        }
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
