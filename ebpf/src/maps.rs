//! Every map the programs use, in one place. Sizes are defaults; userspace may resize some at
//! load time (pid_max for WATCHED, --max-conns for CONNS, --ring-bytes for EVENTS).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use tracewire_common::{
    ActiveCall, COUNTER_COUNT, CallParent, ConnState, DEFAULT_MAX_CONNS, DEFAULT_RING_BYTES, GoKey, GoProc,
    ListenerState, MAX_ACTIVE, MAX_CGROUPS, MAX_GOROUTINES, MAX_LISTENERS, MAX_MUTED, MAX_PORTS,
    MAX_THREAD_CTX, MAX_TLS_SESSIONS, SCRATCH_BYTES, SockAddr, TcpCtxEntry, ThreadCtx, TlsCall, TlsKey,
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// One byte of `WATCH_*` bits per tgid, eight to a value (an array map rounds every value up to 8
/// bytes: a value per tgid would take 8 × pid_max bytes, 32 MiB at the common 4194304); resized to
/// pid_max / 8 by userspace, which maps it into its memory (`BPF_F_MMAPABLE`). Both sides change
/// its bits with atomic operations (see `util::set_bits`). An array lookup is inlined by the
/// verifier, which keeps the cost for unwatched processes to a few instructions. See
/// `util::watch_byte`.
#[map]
pub static WATCHED: Array<u64> = Array::with_max_entries(32_768 / 8, BPF_F_MMAPABLE);

/// `BPF_F_MMAPABLE`: the array can be mapped into userspace memory.
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map]
pub static CONNS: HashMap<u64, ConnState> = HashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// Connections userspace reads no protocol on, by `fd_key`: the generation it gave up on. The
/// kernel marks the connection [`ConnState::muted`] when it next looks (see
/// [`ConnState::reports`]) and reports nothing more of it.
#[map]
pub static MUTED: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_MUTED, 0);

#[map]
pub static LISTENERS: HashMap<u64, ListenerState> = HashMap::with_max_entries(MAX_LISTENERS, 0);

/// bind() addresses of inet sockets, until listen() turns them into listeners. LRU: sockets
/// bound but never listened on (clients that bind) age out instead of filling the map.
#[map]
pub static BINDS: LruHashMap<u64, SockAddr> = LruHashMap::with_max_entries(MAX_LISTENERS, 0);

/// Parent tgid of processes forked while watched (key: child pid). An accept on a listening fd
/// the child inherited finds the listener under the parent's tgid (fork keeps fd numbers). LRU:
/// the fork hook also fires for threads, whose entries simply age out.
#[map]
pub static PARENTS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(MAX_ACTIVE, 0);

/// Client sockets whose handshake completes after connect() returned: socket address →
/// [fd_key, generation]. LRU: handshakes that never complete age out.
#[map]
pub static CONNECTING: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(MAX_ACTIVE, 0);

#[map]
pub static ACTIVE: HashMap<u64, ActiveCall> = HashMap::with_max_entries(MAX_ACTIVE, 0);

/// LRU: threads that exit without a tracepoint we see must not fill the map.
#[map]
pub static THREAD_CTX: LruHashMap<u32, ThreadCtx> = LruHashMap::with_max_entries(MAX_THREAD_CTX, 0);

#[map]
pub static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

#[map]
pub static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(MAX_CGROUPS, 0);

/// One scratch buffer per CPU, indexed by CPU id (resized to the possible CPU count by
/// userspace). A plain array, not a per-CPU one: per-CPU values are limited to 32 KiB and a
/// header plus two 16 KiB payload caps is just over that. Tracing programs do not nest on a CPU
/// (the kernel's bpf_prog_active guard), so each slot has one user at a time.
#[map]
pub static SCRATCH: Array<Scratch> = Array::with_max_entries(256, 0);

/// A scratch slot. Eight-byte aligned (as map values are) so that events are written into it
/// with word stores: through a byte-aligned type the BPF compiler stores one byte at a time.
#[repr(C, align(8))]
pub struct Scratch(pub [u8; SCRATCH_BYTES]);

/// The head rate limiter's theoretical arrival time of the next trace (ns, see
/// `context::admitted`): one word shared by every CPU, updated with compare-and-swap.
#[map]
pub static RATE: Array<u64> = Array::with_max_entries(1, 0);

/// Each CPU's id generator state (see `context::rand64`); zero until first used.
#[map]
pub static RNG: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Trace context to write in the TCP option of a traced client socket's data segments, by
/// socket address. Set when a request starts; LRU because a process that dies without close()
/// leaves its entries behind (the local port in the value keeps a reused address from matching).
#[map]
pub static TCP_TX: LruHashMap<u64, TcpCtxEntry> = LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// Trace context received in a TCP option, by socket address, until the reading thread picks it
/// up. LRU: options arrive for every socket on the node, traced or not.
#[map]
pub static TCP_RX: LruHashMap<u64, TcpCtxEntry> = LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// Client sockets of watched processes, by socket address, from connect() until the handshake
/// completes: only these get the TCP-option write callback, so the segments of every other
/// process on the node cost the kernel nothing extra. LRU: connects that never complete age out.
#[map]
pub static TCP_TRACED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(MAX_ACTIVE, 0);

/// Tracked connections by socket address (value: `[fd_key, generation]`): how a TCP state change,
/// which knows only the socket, ends its connection, and how the sk_msg program finds a client's
/// state. Set once a connection's socket is known. LRU: a process that dies leaves entries
/// behind (the generation keeps them from matching a later connection).
#[map]
pub static SK_CONN: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// Sockets accepted since the agent started (LISTEN→SYN_RECV, in softirq context, for every
/// process: the owner is known only when it first reads or writes), until that first use opens
/// their connection or they close. LRU: connections of processes never selected age out.
#[map]
pub static SERVER_SKS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// Client sockets of selected processes whose outgoing requests get a `traceparent` (the sk_msg
/// program runs on their sends), by socket address. Only while injection is on.
#[map]
pub static INJECT_SOCKS: SockHash<u64> = SockHash::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// Index 0 is 1 once userspace has checked that injection is safe on this kernel and attached
/// the sk_msg program: until then (and for good where it is refused) no socket joins
/// `INJECT_SOCKS`, since membership alone changes how the kernel treats a socket.
#[map]
pub static INJECT_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Go programs whose goroutines the uprobes follow, by tgid (see `golang`).
#[map]
pub static GO_PROCS: HashMap<u32, GoProc> = HashMap::with_max_entries(4096, 0);

/// The request each goroutine serves: set when it reads from a server connection. LRU, and
/// checked on use (goroutine id, the connection still in that request): goroutines end without
/// a hook seeing it.
#[map]
pub static GO_SERVING: LruHashMap<GoKey, CallParent> = LruHashMap::with_max_entries(MAX_GOROUTINES, 0);

/// The request a goroutine inherited from the goroutine that started it (transitively), set when
/// it is created: every creation rewrites its `g`'s entry, so an entry is never a previous
/// goroutine's.
#[map]
pub static GO_ANCESTRY: LruHashMap<GoKey, CallParent> = LruHashMap::with_max_entries(MAX_GOROUTINES, 0);

/// The served request an outgoing `*http.Request` belongs to, from the call until the transport
/// writes it. LRU: a call that fails before it is written leaves its entry.
#[map]
pub static GO_REQS: LruHashMap<GoKey, CallParent> = LruHashMap::with_max_entries(MAX_GOROUTINES, 0);

/// Go: the request an outgoing call on a client connection (by `fd_key`) is made for, from
/// `roundTrip`, which reads the connection's fd out of the `persistConn`, until the call's first
/// bytes leave. Every call on the connection rewrites it; the connection's end removes it.
#[map]
pub static GO_TIES: LruHashMap<u64, CallParent> = LruHashMap::with_max_entries(MAX_ACTIVE, 0);

/// The served request of the call a transport goroutine is writing, until its first bytes leave.
#[map]
pub static GO_WRITERS: LruHashMap<GoKey, CallParent> = LruHashMap::with_max_entries(MAX_GOROUTINES, 0);

/// nginx: the client connection (fd) whose request the worker thread is starting an upstream
/// for, while `ngx_http_upstream_init` runs (see `nginx`).
#[map]
pub static NGX_REQ: LruHashMap<u32, u32> = LruHashMap::with_max_entries(MAX_ACTIVE, 0);

/// nginx: the `ngx_peer_connection_t` being connected by each thread, from the entry of
/// `ngx_event_connect_peer` to its return.
#[map]
pub static NGX_PEER: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_ACTIVE, 0);

/// nginx: the request an upstream connection (by `fd_key`) was connected or taken from the
/// keep-alive pool for, until its request starts. Every `ngx_event_connect_peer` rewrites its
/// connection's entry, and close() of the fd removes it.
#[map]
pub static NGX_TIES: LruHashMap<u64, CallParent> = LruHashMap::with_max_entries(MAX_ACTIVE, 0);

/// TLS library calls in flight, one per thread at most (see `tls`): written at the call's entry,
/// named a socket by the socket hooks inside it, taken at its return.
#[map]
pub static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(MAX_ACTIVE, 0);

/// The socket fd each TLS session of a process moved bytes on last: a read the library answers
/// from what it had buffered makes no socket call to name it.
#[map]
pub static TLS_FDS: LruHashMap<TlsKey, u32> = LruHashMap::with_max_entries(MAX_TLS_SESSIONS, 0);

/// The TLS connection each thread last read ciphertext from outside a TLS library call, until
/// the thread's next library call takes it: a library fed through memory buffers (Node.js,
/// Python's asyncio) makes no socket call of its own, and its program hands the bytes it read to
/// the session that owns the socket right away, on the same thread (see `tls`). LRU: a thread
/// that exits leaves its entry.
#[map]
pub static TLS_READS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_ACTIVE, 0);

/// Go `crypto/tls`: the socket fd of the `Conn` each goroutine is reading from, from the read's
/// entry to the copy of its plaintext into the caller's buffer (see `gotls`). LRU: a read that
/// fails before the copy leaves its entry, which the goroutine's next read rewrites.
#[map]
pub static GO_TLS_READS: LruHashMap<GoKey, u32> = LruHashMap::with_max_entries(MAX_GOROUTINES, 0);
