//! The ABI shared by tracewire's kernel programs and its userspace agent.
//!
//! Everything here crosses the kernel/user boundary, so every type is `#[repr(C)]`, `Copy`, has a
//! fixed size with explicit padding, and carries a compile-time layout assertion: a field change
//! that moves the ABI fails the build on both sides. Flags are integers, never `bool`, and enums
//! travel as raw integers that userspace converts with `TryFrom` (an unknown value is a decode
//! error, not undefined behaviour).
#![no_std]
#![warn(missing_docs)]

use core::mem::{offset_of, size_of};

/// Map names, shared by the `#[map]` statics and userspace `take_map` calls.
pub mod maps {
    /// Ring buffer carrying every event to userspace.
    pub const EVENTS: &str = "EVENTS";
    /// `u8` array indexed by tgid: 1 when the process is selected for tracing.
    pub const WATCHED: &str = "WATCHED";
    /// Open TCP connections of watched processes, keyed by [`crate::fd_key`].
    pub const CONNS: &str = "CONNS";
    /// Client sockets whose requests get a `traceparent` inserted (sockhash).
    pub const INJECT_SOCKS: &str = "INJECT_SOCKS";
    /// The switch that lets sockets join [`INJECT_SOCKS`] (index 0).
    pub const INJECT_ON: &str = "INJECT_ON";
    /// Listening TCP sockets of watched processes, keyed by [`crate::fd_key`].
    pub const LISTENERS: &str = "LISTENERS";
    /// Connections userspace reads no protocol on (see [`crate::ConnState::muted`]).
    pub const MUTED: &str = "MUTED";
    /// Parent tgid of processes forked while watched.
    pub const PARENTS: &str = "PARENTS";
    /// Syscalls in flight (entered, not yet returned), keyed by pid_tgid.
    pub const ACTIVE: &str = "ACTIVE";
    /// Which server connection each thread is currently serving, keyed by tid.
    pub const THREAD_CTX: &str = "THREAD_CTX";
    /// Ports selected with `--port` (key: port in host order).
    pub const PORTS: &str = "PORTS";
    /// cgroup ids selected with `--cgroup`.
    pub const CGROUPS: &str = "CGROUPS";
    /// Per-CPU scratch buffer where data events are assembled.
    pub const SCRATCH: &str = "SCRATCH";
    /// Per-CPU counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Trace context to send in TCP options, by socket.
    pub const TCP_TX: &str = "TCP_TX";
    /// Trace context received in TCP options, by socket.
    pub const TCP_RX: &str = "TCP_RX";
    /// Go programs whose net/http calls are linked through goroutines, keyed by tgid.
    pub const GO_PROCS: &str = "GO_PROCS";
    /// TLS library calls in flight, keyed by pid_tgid.
    pub const TLS_CALLS: &str = "TLS_CALLS";
    /// The socket each TLS session of a process moves its bytes on, keyed by [`crate::TlsKey`].
    pub const TLS_FDS: &str = "TLS_FDS";
}

/// Default number of connections tracked at once in the kernel.
pub const DEFAULT_MAX_CONNS: u32 = 65_536;
/// Default number of listening sockets tracked at once.
pub const MAX_LISTENERS: u32 = 8_192;
/// In-flight syscalls (one per thread at most).
pub const MAX_ACTIVE: u32 = 16_384;
/// Connections userspace muted and the kernel has not looked up yet ([`ConnState::muted`]): an
/// LRU, so the oldest requests are forgotten (their connections go on being reported).
pub const MAX_MUTED: u32 = 8_192;
/// Threads whose server context is remembered.
pub const MAX_THREAD_CTX: u32 = 16_384;
/// Port filter entries.
pub const MAX_PORTS: u32 = 1_024;
/// cgroup filter entries.
pub const MAX_CGROUPS: u32 = 1_024;
/// Default ring buffer size in bytes (a power-of-two multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;

/// The largest payload prefix one event can carry. A power of two: the kernel masks offsets with
/// `MAX_PAYLOAD - 1` so the verifier can prove every copy stays inside the scratch buffer.
pub const MAX_PAYLOAD: usize = 16_384;
/// Default payload capture cap.
pub const DEFAULT_PAYLOAD: u32 = 4_096;
/// Scratch buffer size: a data header, then room for two payload caps (the second cap only exists
/// so that a masked offset plus a masked length is always in bounds).
pub const SCRATCH_BYTES: usize = size_of::<DataEvent>() + 2 * MAX_PAYLOAD;
/// iovecs gathered per readv/writev/recvmsg/sendmsg call; later ones are counted, not copied.
pub const MAX_IOVECS: usize = 64;

/// Key of per-process fd maps: tgid in the high half, fd in the low half.
#[inline(always)]
pub const fn fd_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// Static configuration, written into the programs' read-only data at load time so the verifier
/// can fold it into constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The agent's own tgid: its traffic (OTLP export) is never traced.
    pub self_tgid: u32,
    /// One of the `SELECT_*` constants.
    pub select: u32,
    /// Payload bytes copied per event (≤ [`MAX_PAYLOAD`]).
    pub payload_cap: u32,
    /// 1 when the port filter applies.
    pub port_filter: u32,
    /// Offset of `child_pid` in `sched:sched_process_fork` records: it moved when the comm
    /// fields became `__data_loc` strings, so userspace reads it from tracefs.
    pub fork_child_pid_offset: u32,
    /// `CFG_*` switches.
    pub flags: u32,
    /// Wake userspace once this many bytes are waiting in the ring buffer (0: every event); a
    /// power of two.
    pub wakeup_bytes: u64,
    /// Head sampling of traces that start here: a new trace is sampled when the integer formed
    /// by the rightmost 7 bytes of its id is below this (2^56 keeps all, 0 none). The same rule
    /// as userspace's ratio sampler, so both (and every other node) agree.
    pub sample_threshold: u64,
    /// Head rate limiting of traces that start here (0: off, the threshold above decides): one
    /// sampled trace per this many ns on average across the node, with a burst of about a
    /// second's worth (a GCRA limiter on one shared word).
    pub rate_interval_ns: u64,
    /// Where `struct sock_common` keeps a socket's addresses on this kernel (from its BTF), for
    /// the socket hooks, which receive the socket itself.
    pub sk: SockOffsets,
}
const _: () = assert!(size_of::<Config>() == 72);

/// Byte offsets in `struct sock_common`. `valid` is 0 when they could not be resolved: the
/// addresses are then learned from `tcp:tcp_rcv_space_adjust` records instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// 1 when the offsets below were resolved.
    pub valid: u16,
    /// `skc_daddr` (be32).
    pub daddr: u16,
    /// `skc_rcv_saddr` (be32).
    pub rcv_saddr: u16,
    /// `skc_dport` (be16).
    pub dport: u16,
    /// `skc_num` (local port, host order).
    pub num: u16,
    /// `skc_family`.
    pub family: u16,
    /// `skc_v6_daddr` (16 bytes).
    pub v6_daddr: u16,
    /// `skc_v6_rcv_saddr` (16 bytes).
    pub v6_rcv_saddr: u16,
    /// `struct sock`'s `sk_socket` (NULL once the application closed the socket).
    pub socket: u16,
    /// `struct sock`'s `sk_protocol` (u16; a bitfield before Linux 5.6, which has no socket
    /// tracepoints anyway).
    pub protocol: u16,
}

/// [`Config::flags`]: write and read the trace-context TCP option (the sock_ops program is
/// attached).
pub const CFG_TCP_OPTION: u32 = 1;
/// [`Config::flags`]: a remote parent's sampled flag decides (parent-based samplers); without it
/// every trace is decided by the ratio on its trace id.
pub const CFG_PARENT_BASED: u32 = 2;
/// [`Config::flags`]: requests that are not sampled are not reported at all (decided where the
/// request starts; the context still travels on, with its sampled flag clear).
pub const CFG_SKIP_UNSAMPLED: u32 = 4;
/// [`Config::flags`]: selected processes' outgoing HTTP/1 requests that carry no `traceparent`
/// get one inserted (the sk_msg program is attached).
pub const CFG_INJECT: u32 = 8;
/// [`Config::flags`]: connections are followed from TCP state changes and socket events alone
/// (no syscall tracepoint: those put every syscall of every task on the kernel's slow path).
/// Clients are opened by the CLOSE→SYN_SENT change inside connect(); servers when a socket
/// accepted after the agent started (LISTEN→SYN_RECV) is first read or written; connections end
/// at LAST_ACK/CLOSE or when their fd turns out to name another socket.
pub const CFG_SOCKET_LIFECYCLE: u32 = 16;
/// [`Config::sample_threshold`] that keeps every trace.
pub const SAMPLE_ALL: u64 = 1 << 56;

/// TCP option carrying trace context between agents: experimental kind (RFC 6994) with a
/// 16-bit ExID, then trace id (16 bytes) and span id (8 bytes). 28 bytes: what is left of the
/// 40-byte option space next to TCP timestamps. The sampled flag is the span id's lowest bit
/// (span ids are minted where the option is written, so both ends see the same id).
pub const TCPOPT_KIND: u8 = 253;
/// ExID of the tracewire option ("tw").
pub const TCPOPT_EXID: u16 = 0x7477;
/// Length of the tracewire option.
pub const TCPOPT_LEN: u8 = 28;

/// Trace every process (except the agent itself).
pub const SELECT_ALL: u32 = 0;
/// Trace processes marked in [`maps::WATCHED`] (by pid, executable or cgroup).
pub const SELECT_WATCHED: u32 = 1;

/// [`maps::WATCHED`] value bit: the process is selected.
pub const WATCH_SELECTED: u8 = 1;
/// [`maps::WATCHED`] value bit: the process's threads do not own the requests they touch
/// (goroutines, work-stealing runtimes, a reactor thread handing requests to workers), so a
/// thread's current request is no evidence of a call's parent. Set by userspace for Go
/// binaries and by the kernel when a response is written by another thread than the one that
/// read its request.
pub const WATCH_HANDOFF: u8 = 2;
/// [`maps::WATCHED`] value bit: a Go program whose goroutines the uprobes follow (its entry in
/// [`maps::GO_PROCS`] says where the runtime keeps a goroutine's id).
pub const WATCH_GO: u8 = 4;
/// [`maps::WATCHED`] value bit: the process has opened a client connection (set by the kernel
/// when one opens, by the agent for those found in /proc). Only a client's send needs the send
/// hook's work at its start; a process that only serves skips it.
pub const WATCH_CLIENTS: u8 = 8;
/// [`maps::WATCHED`] value bit: the process called into its TLS library, whose functions
/// (OpenSSL's `SSL_read`/`SSL_write`...) the agent probes; set by the kernel at the first call.
/// The socket hooks then check whether a call on a connection is made inside one (its bytes are
/// ciphertext, and the plaintext is reported from the library's return instead); other
/// processes never look.
pub const WATCH_TLS: u8 = 16;
/// [`maps::WATCHED`] value bit: a Go program whose `crypto/tls` connections the uprobes follow
/// (set by userspace). The socket hooks then check whether a connection's first bytes read are a
/// TLS record (a server's handshake, a session begun before tracewire started), and note which
/// goroutine reads a TLS connection's ciphertext.
pub const WATCH_GO_TLS: u8 = 32;

/// [`ConnState::tls`]: the connection's bytes are ciphertext, its plaintext is reported from the
/// TLS library's calls.
pub const TLS_ON: u8 = 1;
/// [`ConnState::tls`]: a Go `crypto/tls` handshake started on the connection; its first
/// plaintext starts afresh (the handshake's own segments took turns, see `report_tls`).
pub const TLS_HANDSHAKING: u8 = 2;

/// TLS sessions (`SSL *`) whose socket is remembered at once, over all processes.
pub const MAX_TLS_SESSIONS: u32 = 16_384;

/// [`TlsCall::kind`]: `SSL_read` / `SSL_read_ex`.
pub const TLS_READ: u8 = 1;
/// [`TlsCall::kind`]: `SSL_write` / `SSL_write_ex`.
pub const TLS_WRITE: u8 = 2;
/// [`TlsCall::kind`]: `SSL_do_handshake` (also inside `SSL_connect` / `SSL_accept`).
pub const TLS_HANDSHAKE: u8 = 3;
/// [`TlsCall::fd`] before a socket call inside the library call named it.
pub const TLS_NO_FD: u32 = u32::MAX;

/// A TLS library call in flight on one thread (value of [`maps::TLS_CALLS`]): its arguments
/// from the entry, and the socket the kernel saw it move bytes on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TlsCall {
    /// The session (`SSL *`).
    pub ssl: u64,
    /// The caller's plaintext buffer.
    pub buf: u64,
    /// `SSL_read_ex` / `SSL_write_ex`: where the library stores the byte count (the return
    /// value is 1 or 0); 0 when the return value is the count.
    pub len_ptr: u64,
    /// The fd of the socket a socket call made inside this call used ([`TLS_NO_FD`] before one).
    pub fd: u32,
    /// `TLS_*`.
    pub kind: u8,
    /// Reserved.
    pub _pad: [u8; 3],
    /// The bytes a write hands the library (its `num` argument; 0 for reads and handshakes).
    pub num: u64,
}
const _: () = assert!(size_of::<TlsCall>() == 40);

/// Key of [`maps::TLS_FDS`]: a session of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TlsKey {
    /// The session (`SSL *`).
    pub ssl: u64,
    /// Its process.
    pub tgid: u32,
    /// Reserved.
    pub _pad: u32,
}
const _: () = assert!(size_of::<TlsKey>() == 16);

/// Goroutines remembered at once, per map (the goroutine serving a request, the request an
/// outgoing call belongs to, the goroutine writing it).
pub const MAX_GOROUTINES: u32 = 16_384;

/// What the kernel needs to know about a Go program's runtime, the value of [`maps::GO_PROCS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GoProc {
    /// Offset of `goid` in `runtime.g`: a goroutine's id is never reused, its `g` is.
    pub goid_offset: u32,
    /// Offset of `m` (the OS thread running it) in `runtime.g`; 0 when unknown, and then
    /// goroutines do not inherit the request of the goroutine that started them.
    pub g_m: u32,
    /// Offset of `curg` (the user goroutine it runs) in `runtime.m`.
    pub m_curg: u32,
    /// Offset of `sched` (the saved registers) in `runtime.g`.
    pub g_sched: u32,
    /// Set by the kernel at the program's first net/http call: userspace then starts following
    /// goroutine creation (which costs a probe hit per goroutine), not before.
    pub calls: u32,
    /// Offset of `conn` (a `net.Conn` interface) in `net/http.persistConn`.
    pub pc_conn: u32,
    /// Offset of the `*netFD` in `net.TCPConn` (its embedded `conn.fd`).
    pub tcp_fd: u32,
    /// Offset of the socket's fd in `net.netFD` (`pfd.Sysfd`).
    pub netfd_sysfd: u32,
    /// Address of the `*net.TCPConn` → `net.Conn` itab in the process: a `conn` whose itab is
    /// this one is a TCP connection, and its fd can be read. 0 when unknown: the call is then
    /// handed to the transport's writer goroutine through `(*Request).write` instead.
    pub tcp_itab: u64,
    /// Offset of `conn` (the `net.Conn` under the TLS) in `crypto/tls.Conn`.
    pub tls_conn: u32,
    /// 1 when the program's `crypto/tls` connections are followed (see the kernel's `gotls`).
    pub tls: u32,
    /// Address of the `*crypto/tls.Conn` → `net.Conn` itab: a `persistConn.conn` with this one
    /// is a TLS connection, whose fd is read through its `conn`. 0 when unknown.
    pub tls_itab: u64,
    /// Offset of `conn` (a `net.Conn`) in `net/http.http2serverConn`; 0 when its HTTP/2 server
    /// is not followed (see the kernel's `go_h2_headers`).
    pub h2_conn: u32,
    /// Where `crypto/tls.(*Conn).Read` keeps its receiver for the whole call, relative to the
    /// stack pointer inside it (its argument spill slot); 0 when not known, and then its entry
    /// is probed to note the connection (see the kernel's `gotls`).
    pub read_conn_at: u32,
}
const _: () = assert!(size_of::<GoProc>() == 64);

/// A goroutine (or a request object) of one process: the key of the goroutine maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GoKey {
    /// Process.
    pub tgid: u32,
    /// Reserved.
    pub _pad: u32,
    /// Address of the goroutine's `runtime.g` (or of the `*http.Request`).
    pub addr: u64,
}

/// The server request an outgoing call is made for (as the kernel followed it through a
/// runtime: a goroutine, an nginx upstream), or the one a goroutine serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CallParent {
    /// Go: the goroutine the entry is about (an entry found under a recycled `g` is stale).
    pub goid: u64,
    /// The server connection whose request it is.
    pub conn: ConnId,
    /// That request's trace id.
    pub trace_id: [u8; 16],
    /// Its server span id.
    pub span_id: [u8; 8],
    /// Its W3C trace flags.
    pub trace_flags: u8,
    /// Reserved, as three words: an odd-sized array is zeroed with a call to a byte-at-a-time
    /// memset in the kernel programs (see `DataEvent::_pad`).
    pub _pad: u8,
    /// Reserved.
    pub _pad2: u16,
    /// Reserved.
    pub _pad3: u32,
}
const _: () = assert!(size_of::<CallParent>() == 56);

/// Event kinds (stable wire ids; holes are intentional).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TCP connection was accepted or connected ([`ConnEvent`]).
    ConnOpen = 1,
    /// A tracked connection was closed ([`ConnEvent`]).
    ConnClose = 2,
    /// A TCP socket started listening ([`ConnEvent`], role listener).
    Listen = 3,
    /// Addresses of a connection learned after it opened ([`ConnEvent`]): an accept() without
    /// a sockaddr, or a wildcard listener, resolved on the connection's first read.
    ConnAddr = 4,
    /// Bytes moved on a tracked connection ([`DataEvent`] + payload).
    Data = 10,
    /// A process called exec ([`ProcEvent`]).
    Exec = 20,
    /// A process (thread group leader) exited ([`ProcEvent`]).
    Exit = 21,
    /// A watched process forked ([`ProcEvent`]).
    Fork = 22,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(v: u32) -> Result<Self, u32> {
        Ok(match v {
            1 => Self::ConnOpen,
            2 => Self::ConnClose,
            3 => Self::Listen,
            4 => Self::ConnAddr,
            10 => Self::Data,
            20 => Self::Exec,
            21 => Self::Exit,
            22 => Self::Fork,
            other => return Err(other),
        })
    }
}

/// Common prefix of every event. Decoders read it first, then dispatch on `kind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// CPU the event was produced on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the event happened.
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid in the high half, thread id in the low half.
    pub pid_tgid: u64,
}
const _: () = assert!(size_of::<EventHeader>() == 24);

/// Identity of one connection over time: fd and pid reuse never merge two connections because
/// `gen` (the monotonic time the agent first saw it) differs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConnId {
    /// Process owning the socket.
    pub tgid: u32,
    /// File descriptor in that process.
    pub fd: u32,
    /// Monotonic ns at first sight; unique per (tgid, fd) over time.
    pub generation: u64,
}
const _: () = assert!(size_of::<ConnId>() == 16);

/// Connection role.
pub const ROLE_SERVER: u8 = 1;
/// Connection role.
pub const ROLE_CLIENT: u8 = 2;
/// A listening socket (only in [`EventKind::Listen`]).
pub const ROLE_LISTENER: u8 = 3;
/// Role not known (a connection found in /proc whose peer is not a local listener).
pub const ROLE_UNKNOWN: u8 = 0;

/// `AF_INET`.
pub const FAMILY_V4: u16 = 2;
/// `AF_INET6`.
pub const FAMILY_V6: u16 = 10;

/// One socket address. `addr` holds 4 (IPv4) or 16 (IPv6) bytes in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SockAddr {
    /// [`FAMILY_V4`], [`FAMILY_V6`] or 0 when unknown.
    pub family: u16,
    /// Port in host order (0 when unknown).
    pub port: u16,
    /// Address bytes in network order.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<SockAddr>() == 20);

/// Kernel-side state of a tracked connection, the value of [`maps::CONNS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnState {
    /// See [`ConnId::generation`].
    pub generation: u64,
    /// `ROLE_*`.
    pub role: u8,
    /// Direction of the last data (`DIR_*`, 0 before any): a change starts a new turn, which
    /// is where trace context is minted (a request read by a server, written by a client).
    pub turn: u8,
    /// 1 when `rx` holds a context received in a TCP option and not used yet.
    pub rx_valid: u8,
    /// 1 once this turn's `traceparent` injection was decided (done or not): one per request.
    pub injected: u8,
    /// Bytes read so far (wrapping).
    pub bytes_in: u32,
    /// Local address.
    pub local: SockAddr,
    /// Remote address.
    pub remote: SockAddr,
    /// Kernel address of the socket (0 until learned): the key of the TCP-option maps.
    pub skaddr: u64,
    /// Server connections: the thread that read the request of the open turn.
    pub turn_tid: u32,
    /// 1 while the current turn's request is not sampled: its bytes are not reported.
    pub skip: u8,
    /// What was left unreported since the last event, which the next event says: `GAP_*` bits
    /// ([`DATA_FLAG_AFTER_SKIP`], [`DATA_FLAG_AFTER_LOSS`]).
    pub gap: u8,
    /// 1 when the socket closed (a reset, the peer's FIN after a half-close) while its application
    /// still holds it: what it received can still be read. It ends at the first call on it that
    /// moves no bytes (end of stream, an error), or when the socket is freed.
    pub closing: u8,
    /// Bit `1 << DIR_*` set while that direction is inside a body the kernel may count without
    /// copying (see [`DATA_FLAG_BODY_SKIPPED`]): after a head written on its own, a head whose
    /// body was skipped, or a message start cut at the capture cap; cleared when the other
    /// direction has spoken since (HTTP/1 takes turns).
    pub in_body: u8,
    /// Trace context of the current turn.
    pub ctx: TraceCtx,
    /// Context received in the TCP option, waiting for the request it came with.
    pub rx: TcpCtx,
    /// Client connections: the server request the current turn's call was made for, when the
    /// kernel followed it through the runtime ([`CTX_GOROUTINE`], [`CTX_UPSTREAM`]).
    pub parent: ConnId,
    /// Socket hooks, client connections: when the send in progress queued its first bytes (a
    /// client span starts there), 0 between sends. Kept with the connection rather than the
    /// thread: a server's response then needs no per-thread entry at all.
    pub send_ns: u64,
    /// [`TLS_ON`] once the connection's bytes were seen moved by a TLS library call (see
    /// [`WATCH_TLS`]): its socket calls carry ciphertext and are not reported; the library's
    /// calls report the plaintext ([`DATA_FLAG_TLS`]). [`TLS_HANDSHAKING`] from a Go handshake's
    /// first bytes to its first plaintext.
    pub tls: u8,
    /// 1 once the connection's client sent the HTTP/2 preface: its bytes are frames whose header
    /// blocks share a compression table, so none may be left out (no body skipping, no
    /// unsampled turns) and turns are not requests.
    pub h2: u8,
    /// 1 once the connection's first bytes seen were looked at for a TLS record: a connection
    /// whose bytes are ciphertext from the first (a TLS library over memory buffers, one that is
    /// not probed) is marked [`TLS_HANDSHAKING`] there, and its socket calls are not reported.
    pub looked: u8,
    /// 1 once userspace said it reads no protocol on this connection ([`maps::MUTED`] holds its
    /// generation): its bytes are no longer reported.
    pub muted: u8,
    /// Calls reported (wrapping): [`maps::MUTED`] is looked up at the 4th, 8th, ... 128th of
    /// every 256, so a muted connection stops within twice the calls it took userspace to say so,
    /// and the others pay a lookup on 6 calls in 256.
    pub reports: u8,
    /// Reserved.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ConnState>() == 168);

/// Where a turn's trace context came from ([`TraceCtx::origin`]).
pub const CTX_NONE: u8 = 0;
/// A new trace started here.
pub const CTX_ROOT: u8 = 1;
/// The request's `traceparent` header (server turns).
pub const CTX_HEADER: u8 = 2;
/// The tracewire TCP option of the peer's agent (server turns).
pub const CTX_TCP: u8 = 3;
/// The request the thread was serving (client turns).
pub const CTX_THREAD: u8 = 4;
/// The thread was serving several requests: a new trace, the parent is not guessed.
pub const CTX_AMBIGUOUS: u8 = 5;
/// The request the calling goroutine serves, followed through Go's net/http (client turns).
pub const CTX_GOROUTINE: u8 = 6;
/// The request nginx opened (or took from its keep-alive pool) this upstream connection for,
/// followed by uprobes (client turns).
pub const CTX_UPSTREAM: u8 = 7;

/// Trace context minted in the kernel at the start of a turn, so that the span id written in
/// the TCP option is the one userspace exports.
// Eight-byte aligned (its size does not change): the BPF compiler copies a byte-aligned struct
// one byte at a time, and the programs copy contexts on every request.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceCtx {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// This turn's span id.
    pub span_id: [u8; 8],
    /// Parent span id (zero when none).
    pub parent_id: [u8; 8],
    /// `CTX_*`.
    pub origin: u8,
    /// W3C trace flags (bit 0: sampled).
    pub trace_flags: u8,
    /// Reserved.
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<TraceCtx>() == 40 && align_of::<TraceCtx>() == 8);

/// The payload of the tracewire TCP option, and the value of [`maps::TCP_TX`] /
/// [`maps::TCP_RX`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpCtx {
    /// Trace id.
    pub trace_id: [u8; 16],
    /// Client span id; its lowest bit is the sampled flag.
    pub span_id: [u8; 8],
}
const _: () = assert!(size_of::<TcpCtx>() == 24);

/// A [`TcpCtx`] keyed by socket, with the socket's local port to detect a reused address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpCtxEntry {
    /// The context.
    pub ctx: TcpCtx,
    /// Local port of the socket it belongs to (host order).
    pub local_port: u32,
    /// Reserved.
    pub _pad: u32,
}
const _: () = assert!(size_of::<TcpCtxEntry>() == 32);

/// Value of [`maps::LISTENERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ListenerState {
    /// Bound address (the unspecified address for wildcard binds). Family 0: userspace found this
    /// listening fd is not TCP, accepts on it are ignored.
    pub local: SockAddr,
}
const _: () = assert!(size_of::<ListenerState>() == 20);

/// Which server connection a thread is serving (value of [`maps::THREAD_CTX`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ThreadCtx {
    /// The server connection whose request this thread read last.
    pub conn: ConnId,
    /// When that request's first bytes were read.
    pub since_ns: u64,
    /// Trace id of that request.
    pub trace_id: [u8; 16],
    /// Its server span id.
    pub span_id: [u8; 8],
    /// Its W3C trace flags.
    pub trace_flags: u8,
    /// Server requests this thread has read and not answered yet: more than one means the
    /// thread interleaves requests (an event loop), and a call it makes has no certain parent.
    pub open: u8,
    /// Reserved.
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<ThreadCtx>() == 56);

/// Connection lifecycle event: [`EventKind::ConnOpen`], [`EventKind::ConnClose`],
/// [`EventKind::Listen`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    /// Common header.
    pub header: EventHeader,
    /// The connection.
    pub conn: ConnId,
    /// `ROLE_*`.
    pub role: u8,
    /// `CONN_FLAG_*`.
    pub flags: u8,
    /// Reserved.
    pub _pad: [u8; 2],
    /// For accepted connections: the listening fd they came from.
    pub listener_fd: u32,
    /// Local address (family 0 when the kernel could not see it).
    pub local: SockAddr,
    /// Remote address (family 0 when the kernel could not see it).
    pub remote: SockAddr,
}
const _: () = assert!(size_of::<ConnEvent>() == 88);
const _: () = assert!(offset_of!(ConnEvent, header) == 0);

/// The connection was found in /proc when the agent started (synthesised in userspace).
pub const CONN_FLAG_PREEXISTING: u8 = 1;
/// The local address is a wildcard bind: the real one is resolved in userspace.
pub const CONN_FLAG_LOCAL_PARTIAL: u8 = 2;
/// Accepted from a listening fd the kernel programs had not seen listen (inherited across fork,
/// passed over a unix socket, or listening before the process was selected): userspace checks it
/// is TCP, and records the listener so the next accept is known.
pub const CONN_FLAG_UNVERIFIED: u8 = 4;
/// On a close: the socket's state change ended the connection and left its (dead) map entry for
/// the process's own context to replace; userspace removes it if the process exits first.
pub const CONN_FLAG_ENTRY_LEFT: u8 = 8;

/// Direction of a data event.
pub const DIR_INGRESS: u8 = 1;
/// Direction of a data event.
pub const DIR_EGRESS: u8 = 2;

/// The syscall that produced a data event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    /// read(2)
    Read = 1,
    /// write(2)
    Write = 2,
    /// readv(2)
    Readv = 3,
    /// writev(2)
    Writev = 4,
    /// recvfrom(2) (also recv)
    Recvfrom = 5,
    /// sendto(2) (also send)
    Sendto = 6,
    /// recvmsg(2)
    Recvmsg = 7,
    /// sendmsg(2)
    Sendmsg = 8,
    /// sendfile(2): bytes counted, payload never copied (it is file content).
    Sendfile = 9,
    /// `SSL_read` / `SSL_read_ex`: a TLS connection's plaintext.
    SslRead = 10,
    /// `SSL_write` / `SSL_write_ex`: a TLS connection's plaintext.
    SslWrite = 11,
    /// accept(2)
    Accept = 20,
    /// accept4(2)
    Accept4 = 21,
    /// connect(2)
    Connect = 22,
    /// listen(2)
    Listen = 23,
}

impl TryFrom<u8> for Syscall {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        Ok(match v {
            1 => Self::Read,
            2 => Self::Write,
            3 => Self::Readv,
            4 => Self::Writev,
            5 => Self::Recvfrom,
            6 => Self::Sendto,
            7 => Self::Recvmsg,
            8 => Self::Sendmsg,
            9 => Self::Sendfile,
            10 => Self::SslRead,
            11 => Self::SslWrite,
            20 => Self::Accept,
            21 => Self::Accept4,
            22 => Self::Connect,
            23 => Self::Listen,
            other => return Err(other),
        })
    }
}

/// The payload is a prefix: the syscall moved more bytes than were copied.
pub const DATA_FLAG_TRUNCATED: u16 = 1;
/// Copying from user memory failed; `captured` is 0 but `len` bytes moved.
pub const DATA_FLAG_COPY_FAILED: u16 = 2;
/// More iovecs than [`MAX_IOVECS`]: the tail was not copied.
pub const DATA_FLAG_IOV_OVERFLOW: u16 = 4;
/// Requests on this connection were left unreported (not sampled) since its previous event:
/// whatever message was in progress is over.
pub const DATA_FLAG_AFTER_SKIP: u16 = 8;
/// An event of this connection was lost since its previous one (the ring buffer was full):
/// whatever exchange was in progress cannot be completed from what follows, and a response that
/// follows may belong to a later request than the one waiting for it.
pub const DATA_FLAG_AFTER_LOSS: u16 = 32;
/// [`ConnState::gap`]: requests left unreported, not sampled.
pub const GAP_UNSAMPLED: u8 = 1;
/// [`ConnState::gap`]: an event lost to a full ring buffer.
pub const GAP_LOST: u8 = 2;
/// [`ConnState::gap`]: the connection's open event was lost to a full ring buffer; its next
/// data event sends it again first.
pub const GAP_OPEN_LOST: u8 = 4;
/// Body bytes counted, not copied (`len - captured` of them): a write of a complete head and a
/// body in two iovecs (only the head is copied), or a call inside a body ([`ConnState::in_body`])
/// whose first bytes start neither a message nor a chunk size (nothing is copied). Bodies are
/// never exported, and copying them twice (into the event, then into the ring buffer) was most
/// of a large message's cost.
pub const DATA_FLAG_BODY_SKIPPED: u16 = 16;
/// Plaintext of a TLS connection, as the TLS library's call (`SSL_read`, `SSL_write`...)
/// returned it: the socket's own bytes are ciphertext and are not reported.
pub const DATA_FLAG_TLS: u16 = 64;
/// Calls that move fewer bytes than this are copied whole: copying costs less than the checks.
pub const BODY_SKIP_MIN: u64 = 256;

/// Bytes moved on a tracked connection. `captured` payload bytes follow the struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataEvent {
    /// Common header; `ts_ns` is when the syscall returned.
    pub header: EventHeader,
    /// The connection.
    pub conn: ConnId,
    /// When the syscall was entered (a write's first byte leaves at about this time).
    pub enter_ns: u64,
    /// For client connections: the server connection the thread was serving, if any
    /// (`generation == 0` when none).
    pub thread_ctx: ConnId,
    /// Bytes the syscall moved (its return value).
    pub len: u32,
    /// Payload bytes that follow this struct (≤ the payload cap).
    pub captured: u32,
    /// `DIR_*`.
    pub direction: u8,
    /// A [`Syscall`] as `u8`.
    pub syscall: u8,
    /// `DATA_FLAG_*`.
    pub flags: u16,
    /// Connection role (`ROLE_*`), copied so decoding needs no lookup.
    pub role: u8,
    /// Reserved. A byte and a half-word, not `[u8; 3]`: the kernel programs zero an odd-sized
    /// array with a call to a byte-at-a-time memset, on every event.
    pub _pad: u8,
    /// Reserved.
    pub _pad2: u16,
    /// Trace context of the turn these bytes belong to (origin `CTX_NONE` when the kernel
    /// minted none).
    pub ctx: TraceCtx,
}
const _: () = assert!(size_of::<DataEvent>() == 120);
const _: () = assert!(offset_of!(DataEvent, header) == 0);
const _: () = assert!(size_of::<DataEvent>().is_multiple_of(8));

/// Process event: [`EventKind::Exec`], [`EventKind::Exit`], [`EventKind::Fork`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcEvent {
    /// Common header.
    pub header: EventHeader,
    /// The process (for fork: the child).
    pub pid: u32,
    /// The parent (fork) or 0.
    pub ppid: u32,
    /// `comm` of the process.
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<ProcEvent>() == 48);

/// Kernel counters (index into [`maps::COUNTERS`]). Every failure the kernel side can have is
/// counted here; userspace sums the per-CPU values and reports them.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Events written to the ring buffer.
    EventsOut = 0,
    /// Events lost because the ring buffer was full.
    RingFull = 1,
    /// Connections not tracked because [`maps::CONNS`] was full.
    ConnMapFull = 2,
    /// In-flight syscalls not tracked because [`maps::ACTIVE`] was full.
    ActiveMapFull = 3,
    /// Listening sockets not tracked because [`maps::LISTENERS`] was full.
    ListenerMapFull = 4,
    /// Payload copies from user memory that failed.
    CopyFailed = 5,
    /// Data events whose payload was cut at the cap.
    Truncated = 6,
    /// recvmmsg/sendmmsg on a tracked connection (not captured).
    MmsgNotCaptured = 7,
    /// Data syscalls on tracked connections that returned an error or 0.
    DataNoBytes = 8,
    /// accept/connect whose socket could not be identified as TCP.
    NotTcp = 9,
    /// Payload bytes copied into events.
    PayloadBytes = 10,
    /// Connections skipped by the port filter.
    PortFiltered = 11,
    /// Scratch buffer lookups that failed (never expected).
    ScratchMissing = 12,
    /// Events written without waking userspace (batched wakeups).
    WakeupsSkipped = 13,
    /// TCP options written with a request's trace context.
    TcpOptWritten = 14,
    /// Segments of a traced request with no room left for the option.
    TcpOptNoRoom = 15,
    /// TCP options received.
    TcpOptReceived = 16,
    /// Received options that became a request's parent.
    TcpOptUsed = 17,
    /// `traceparent` headers found by the kernel at the start of a request.
    CtxHeader = 18,
    /// Requests not reported because they are not sampled.
    SampledOut = 19,
    /// `traceparent` headers inserted into outgoing requests.
    InjectWritten = 20,
    /// Outgoing requests that already carried a `traceparent` (left as they are).
    InjectHadHeader = 21,
    /// Outgoing requests left without a header: their head is not within the first bytes the
    /// kernel scans, or the message could not be extended.
    InjectSkipped = 22,
    /// Outgoing Go net/http calls linked to the request their goroutine serves.
    GoLinked = 23,
    /// Outgoing Go net/http calls made by a goroutine that serves no request the kernel knows
    /// (one the handler started, or a background task): left unlinked.
    GoNoParent = 24,
    /// nginx upstream requests linked to the client request nginx made them for.
    UpstreamLinked = 25,
    /// Tracked fds found naming another socket: the old connection ended without a close the
    /// kernel side saw end (socket lifecycle), and the new one replaces it.
    FdReused = 26,
    /// Connections whose start was not seen (connect outside a connect/sendto/sendmsg call, such
    /// as io_uring; sockets accepted before the agent started): not traced.
    ConnUnseen = 27,
    /// TCP writes by a watched process on a socket it has no connection for (a port the filter
    /// leaves out, a connection older than the agent that /proc did not show, one whose start
    /// was missed): their bytes are not traced. Counted in processes that have opened a client
    /// connection; a process that only serves skips the send hook that counts them.
    SendUntracked = 28,
    /// Bytes written to the ring buffer (records and their 8-byte headers), on each CPU: what
    /// the wakeups are paced by.
    RingBytes = 29,
    /// Writes whose body was counted, not copied ([`DATA_FLAG_BODY_SKIPPED`]).
    BodySkipped = 30,
    /// Calls looked into (their first bytes read from user memory) to tell whether they go on
    /// with a body ([`ConnState::in_body`]). The next message after the other side has spoken
    /// is not: what it costs shows here.
    BodyChecks = 31,
    /// TLS library calls (`SSL_read`, `SSL_write`...) not followed because [`maps::TLS_CALLS`]
    /// was full: their plaintext is not reported.
    TlsCallsFull = 32,
    /// TLS library calls that moved plaintext on a socket the kernel could not name (the
    /// library's first call on it moved no socket bytes, a connection not tracked): not reported.
    TlsNoConn = 33,
    /// Socket calls of TLS connections (ciphertext), left unreported: their plaintext is reported
    /// from the library's calls.
    TlsCiphertext = 34,
    /// Connections muted: userspace reads no protocol on them (not HTTP, HTTP/2 or a database
    /// it knows, or a tunnel), so their bytes are no longer copied and reported.
    Muted = 35,
}

/// Number of counters.
pub const COUNTER_COUNT: u32 = 36;

impl Counter {
    /// All counters, in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::EventsOut,
        Counter::RingFull,
        Counter::ConnMapFull,
        Counter::ActiveMapFull,
        Counter::ListenerMapFull,
        Counter::CopyFailed,
        Counter::Truncated,
        Counter::MmsgNotCaptured,
        Counter::DataNoBytes,
        Counter::NotTcp,
        Counter::PayloadBytes,
        Counter::PortFiltered,
        Counter::ScratchMissing,
        Counter::WakeupsSkipped,
        Counter::TcpOptWritten,
        Counter::TcpOptNoRoom,
        Counter::TcpOptReceived,
        Counter::TcpOptUsed,
        Counter::CtxHeader,
        Counter::SampledOut,
        Counter::InjectWritten,
        Counter::InjectHadHeader,
        Counter::InjectSkipped,
        Counter::GoLinked,
        Counter::GoNoParent,
        Counter::UpstreamLinked,
        Counter::FdReused,
        Counter::ConnUnseen,
        Counter::SendUntracked,
        Counter::RingBytes,
        Counter::BodySkipped,
        Counter::BodyChecks,
        Counter::TlsCallsFull,
        Counter::TlsNoConn,
        Counter::TlsCiphertext,
        Counter::Muted,
    ];

    /// Stable snake_case name used in logs and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::EventsOut => "events_out",
            Counter::RingFull => "ring_full",
            Counter::ConnMapFull => "conn_map_full",
            Counter::ActiveMapFull => "active_map_full",
            Counter::ListenerMapFull => "listener_map_full",
            Counter::CopyFailed => "copy_failed",
            Counter::Truncated => "truncated",
            Counter::MmsgNotCaptured => "mmsg_not_captured",
            Counter::DataNoBytes => "data_no_bytes",
            Counter::NotTcp => "not_tcp",
            Counter::PayloadBytes => "payload_bytes",
            Counter::PortFiltered => "port_filtered",
            Counter::ScratchMissing => "scratch_missing",
            Counter::WakeupsSkipped => "wakeups_skipped",
            Counter::TcpOptWritten => "tcp_opt_written",
            Counter::TcpOptNoRoom => "tcp_opt_no_room",
            Counter::TcpOptReceived => "tcp_opt_received",
            Counter::TcpOptUsed => "tcp_opt_used",
            Counter::CtxHeader => "ctx_header",
            Counter::SampledOut => "sampled_out",
            Counter::InjectWritten => "inject_written",
            Counter::InjectHadHeader => "inject_had_header",
            Counter::InjectSkipped => "inject_skipped",
            Counter::GoLinked => "go_linked",
            Counter::GoNoParent => "go_no_parent",
            Counter::UpstreamLinked => "upstream_linked",
            Counter::FdReused => "fd_reused",
            Counter::ConnUnseen => "conn_unseen",
            Counter::SendUntracked => "send_untracked",
            Counter::BodySkipped => "body_skipped",
            Counter::BodyChecks => "body_checks",
            Counter::RingBytes => "ring_bytes",
            Counter::TlsCallsFull => "tls_calls_full",
            Counter::TlsNoConn => "tls_no_conn",
            Counter::TlsCiphertext => "tls_ciphertext",
            Counter::Muted => "muted",
        }
    }
}

/// In-flight syscall state (value of [`maps::ACTIVE`]), written at syscall entry and consumed at
/// exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ActiveCall {
    /// Buffer, iovec array, msghdr or sockaddr pointer, depending on `syscall`.
    pub ptr: u64,
    /// Entry time.
    pub enter_ns: u64,
    /// File descriptor.
    pub fd: u32,
    /// iovec count (vectored calls) or sockaddr length.
    pub count: u32,
    /// A [`Syscall`] as `u8`; 0 when the thread has no call in flight (entries stay in the map
    /// between a thread's calls).
    pub syscall: u8,
    /// Set by `sock:inet_sock_set_state` while connect/listen runs: the socket is TCP.
    pub is_tcp: u8,
    /// Reserved.
    pub _pad: [u8; 6],
    /// connect: the destination; listen: the bound address.
    pub addr: SockAddr,
    /// connect: the source address chosen by the kernel.
    pub local: SockAddr,
}
const _: () = assert!(size_of::<ActiveCall>() == 72);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers and arrays of integers, and
    // have no implicit padding (asserted by the size checks above).
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ConnState {}
    unsafe impl aya::Pod for ListenerState {}
    unsafe impl aya::Pod for ThreadCtx {}
    unsafe impl aya::Pod for ActiveCall {}
    unsafe impl aya::Pod for SockAddr {}
    unsafe impl aya::Pod for ConnId {}
    unsafe impl aya::Pod for TcpCtxEntry {}
    unsafe impl aya::Pod for GoProc {}
    unsafe impl aya::Pod for TlsCall {}
    unsafe impl aya::Pod for TlsKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip() {
        for k in [
            EventKind::ConnOpen,
            EventKind::ConnClose,
            EventKind::Listen,
            EventKind::ConnAddr,
            EventKind::Data,
            EventKind::Exec,
            EventKind::Exit,
            EventKind::Fork,
        ] {
            assert_eq!(EventKind::try_from(k as u32), Ok(k));
        }
        assert_eq!(EventKind::try_from(0), Err(0));
        assert_eq!(EventKind::try_from(11), Err(11));
    }

    #[test]
    fn syscalls_round_trip() {
        for v in 0..=255u8 {
            if let Ok(s) = Syscall::try_from(v) {
                assert_eq!(s as u8, v);
            }
        }
        assert!(Syscall::try_from(0).is_err());
    }

    #[test]
    fn counters_are_dense_and_named() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert!(!c.name().is_empty());
        }
    }

    #[test]
    fn fd_key_separates_tgid_and_fd() {
        assert_eq!(fd_key(1, 2), (1 << 32) | 2);
        assert_ne!(fd_key(1, 2), fd_key(2, 1));
    }

    #[test]
    fn scratch_fits_header_and_payload() {
        const { assert!(MAX_PAYLOAD.is_power_of_two()) };
        assert!(SCRATCH_BYTES >= size_of::<DataEvent>() + MAX_PAYLOAD);
    }
}
