//! A running capture: the kernel side plus the bookkeeping only userspace can do: the initial
//! selection and /proc scan, following `--exe` across execs, resolving addresses the kernel could
//! not see, and forgetting the connections of processes that exit. It yields decoded events in
//! kernel order, with synthetic `ConnOpen` events (flag PREEXISTING) for sockets found in /proc.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
    time::Duration,
};

use log::{debug, info, warn};
use tracewire_common::{
    CONN_FLAG_ENTRY_LEFT, CONN_FLAG_LOCAL_PARTIAL, CONN_FLAG_PREEXISTING, CONN_FLAG_UNVERIFIED, ConnEvent,
    ConnId, ConnState, EventHeader, EventKind, ROLE_LISTENER, SockAddr,
};

use super::{Capture, CaptureError, CaptureOptions, KernelCounters, Selection, resolve, runtime, scan};
use crate::events::{Event, clock::Clock, decode};

/// Userspace-side counters of a session.
#[derive(Debug, Default, Clone)]
pub struct SessionStats {
    /// Records read from the ring buffer.
    pub records: u64,
    /// Records that failed to decode, by reason.
    pub decode_errors: HashMap<&'static str, u64>,
    /// Connections found in /proc.
    pub preexisting: u64,
    /// Addresses resolved with pidfd_getfd.
    pub resolved: u64,
    /// Address resolutions that failed (socket already closed, no permission).
    pub resolve_failed: u64,
    /// Processes selected after start (exec matched a glob).
    pub selected_at_exec: u64,
    /// Open connections known to userspace.
    pub open_conns: u64,
    /// Connections not remembered because the userspace table was full.
    pub conn_table_full: u64,
    /// Accepted connections that turned out not to be TCP (inherited unix listeners).
    pub not_tcp: u64,
    /// Accepted connections dropped by the port filter after verification.
    pub port_filtered: u64,
    /// Data events on connections userspace does not know (dropped ones), skipped.
    pub data_unknown_conn: u64,
    /// Processes recognised as Go programs (threads hand requests to each other).
    pub handoff_runtimes: u64,
    /// Go programs whose net/http calls the kernel follows through goroutines.
    pub go_followed: u64,
    /// Go programs whose calls are not followed (old Go, stripped, no net/http client...).
    pub go_not_followed: u64,
    /// Followed Go programs whose `crypto/tls` connections are read in plain text.
    pub go_tls_followed: u64,
    /// nginx processes whose upstream requests the kernel follows.
    pub nginx_followed: u64,
    /// nginx processes whose upstream requests are not followed (symbols not found...).
    pub nginx_not_followed: u64,
    /// Processes whose TLS connections' plaintext is read from their TLS library.
    pub tls_followed: u64,
    /// Processes with a TLS library that cannot be followed (symbols not found, uprobes refused).
    pub tls_not_followed: u64,
    /// Processes not selected because their pid is beyond the selection array (kernel.pid_max
    /// raised after the agent started).
    pub pids_beyond_max: u64,
}

/// A capture session.
pub struct Session {
    capture: Capture,
    selection: Selection,
    /// Open connections by (tgid, fd); bounded by the kernel map's size.
    /// Looked up for every data event: a fast hash (keys are the kernel's pids and fds).
    open: HashMap<(u32, u32), ConnEvent, foldhash::fast::RandomState>,
    /// Dead kernel entries of closed connections, left for their process to replace
    /// ([`CONN_FLAG_ENTRY_LEFT`]): removed here if the process exits first. Bounded like `open`.
    left: HashSet<(u32, u32), foldhash::fast::RandomState>,
    pending: Vec<ConnEvent>,
    stats: SessionStats,
    recorder: Option<crate::events::record::Recorder>,
    batch: RecordBatch,
    /// When Go processes were last checked for a first net/http call.
    go_checked: std::time::Instant,
    /// A runtime that could not be followed was reported.
    warned_not_followed: bool,
    /// Selected processes whose TLS library was not found (or could not be followed): when to
    /// look again, and the step after that. A library loaded after the process started (Python
    /// imports `ssl` when a module needs it) is found at one of the process's next connections.
    /// Bounded ([`TLS_PENDING_MAX`]).
    tls_next: HashMap<u32, (std::time::Instant, Duration), foldhash::fast::RandomState>,
}

/// The first wait before a process's maps are read again for a TLS library; it doubles up to
/// [`TLS_RECHECK_MAX`] (reading a process's maps costs ~0.1 ms).
const TLS_RECHECK_FIRST: Duration = Duration::from_millis(100);
const TLS_RECHECK_MAX: Duration = Duration::from_secs(30);
/// A process whose TLS library cannot be followed is not looked at again for this long.
const TLS_RECHECK_FAILED: Duration = Duration::from_secs(3600);
/// Processes waiting for a TLS library to be looked for again, at most.
const TLS_PENDING_MAX: usize = 16_384;

/// How often Go processes are checked for their first net/http call (from which on their
/// goroutine creation is followed).
const GO_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Ring bytes one poll takes at most (and a record). Small enough that a poll's records, copied
/// out of the ring, and the spans they finish (built, then encoded when the poll returns) are
/// still in the core's caches when they are read again: with 256 KiB per poll the agent spent
/// ~19 % more CPU per request (measured against the traced server's own CPU in the same runs;
/// 16-64 KiB all did equally well). A wakeup still brings up to the wakeup threshold's worth of
/// records: they are taken a poll at a time, without a system call between polls.
const POLL_BYTES: usize = 32 << 10;

/// Ring records of one poll, back to back in one buffer that keeps its capacity.
#[derive(Default)]
struct RecordBatch {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl RecordBatch {
    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    fn push(&mut self, record: &[u8]) {
        self.spans.push((self.bytes.len(), record.len()));
        self.bytes.extend_from_slice(record);
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&(at, len)| &self.bytes[at..at + len])
    }
}

impl Session {
    /// Loads the programs, applies the selection and scans /proc for existing sockets.
    pub fn start(options: CaptureOptions) -> Result<Self, CaptureError> {
        let selection = options.selection.clone();
        // Validate the selection before loading anything (a named error for a missing pid)...
        selection.initial_pids()?;
        let capture = Capture::start(options)?;
        // ...and compute it again once the fork hook is attached: a child forked in between
        // is either in /proc now or seen by the hook.
        let initial = selection.initial_pids()?;
        let mut s = Session {
            capture,
            selection,
            open: HashMap::default(),
            left: HashSet::default(),
            pending: Vec::new(),
            stats: SessionStats::default(),
            recorder: None,
            batch: RecordBatch::default(),
            go_checked: std::time::Instant::now(),
            warned_not_followed: false,
            tls_next: HashMap::default(),
        };
        match &s.selection {
            Selection::All => {
                let pids: Vec<u32> = procfs::process::all_processes()
                    .map(|it| it.filter_map(Result::ok).map(|p| p.pid as u32).collect())
                    .unwrap_or_default();
                let me = std::process::id();
                let mut tables = scan::NetTables::default();
                for pid in pids.into_iter().filter(|p| *p != me) {
                    s.adopt(pid, &mut tables)?;
                }
            }
            Selection::Only { .. } => {
                let mut tables = scan::NetTables::default();
                for pid in initial {
                    s.capture.set_watched(pid, true)?;
                    s.adopt(pid, &mut tables)?;
                }
            }
        }
        Ok(s)
    }

    /// Records every raw ring-buffer record from now on (see `events::record`).
    pub fn record_to(&mut self, recorder: crate::events::record::Recorder) {
        self.recorder = Some(recorder);
    }

    /// Mutes connections no span will come of (see `Capture::mute`).
    pub fn mute(&mut self, conns: &[tracewire_common::ConnId]) {
        let written = self.capture.mute(conns);
        if written < conns.len() {
            debug!("{} of {} connections not muted (map update failed)", conns.len() - written, conns.len());
        }
    }

    /// The underlying capture.
    pub fn capture(&self) -> &Capture {
        &self.capture
    }

    /// Userspace counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Kernel counters.
    pub fn kernel_counters(&self) -> Result<KernelCounters, CaptureError> {
        self.capture.counters()
    }

    /// Registers the existing TCP sockets of `pid` with the kernel maps (namespace tables from
    /// `tables`: a scan of many processes reads each namespace's once).
    fn adopt(&mut self, pid: u32, tables: &mut scan::NetTables) -> Result<(), CaptureError> {
        self.check_runtime(pid)?;
        for sock in scan::tcp_sockets(pid, tables) {
            if sock.listening {
                self.capture.insert_listener(pid, sock.fd, sock.local)?;
                continue;
            }
            if !self.port_selected(&sock) {
                continue;
            }
            let generation = Clock::monotonic_now();
            let state = ConnState {
                generation,
                role: sock.role,
                local: sock.local,
                remote: sock.remote,
                ..ConnState::default()
            };
            if let Err(e) = self.capture.insert_conn(pid, sock.fd, state) {
                warn!("pid {pid} fd {}: not tracked: {e}", sock.fd);
                continue;
            }
            self.stats.preexisting += 1;
            self.pending.push(ConnEvent {
                header: EventHeader {
                    kind: EventKind::ConnOpen as u32,
                    cpu: 0,
                    ts_ns: generation,
                    pid_tgid: (u64::from(pid) << 32) | u64::from(pid),
                },
                conn: ConnId { tgid: pid, fd: sock.fd, generation },
                role: sock.role,
                flags: CONN_FLAG_PREEXISTING,
                _pad: [0; 2],
                listener_fd: 0,
                local: sock.local,
                remote: sock.remote,
            });
        }
        Ok(())
    }

    fn port_selected(&self, sock: &scan::FoundSocket) -> bool {
        let ports = &self.capture.options().ports;
        ports.is_empty() || ports.contains(&sock.local.port) || ports.contains(&sock.remote.port)
    }

    fn remember(&mut self, ev: ConnEvent) {
        let key = (ev.conn.tgid, ev.conn.fd);
        // A new connection on the fd replaced any dead entry.
        self.left.remove(&key);
        if self.open.len() >= self.capture.options().max_conns as usize && !self.open.contains_key(&key) {
            self.stats.conn_table_full += 1;
            return;
        }
        self.open.insert(key, ev);
        self.stats.open_conns = self.open.len() as u64;
    }

    /// Userspace work an event triggers before it is handed on. May rewrite the event (resolved
    /// addresses). Returns whether to hand the event on.
    fn control(&mut self, ev: &mut Event<'_>) -> Result<bool, CaptureError> {
        match ev {
            Event::Conn(c) => match EventKind::try_from(c.header.kind) {
                Ok(EventKind::Listen) => {
                    if c.flags & CONN_FLAG_LOCAL_PARTIAL != 0 {
                        self.fill(c);
                        if c.flags & CONN_FLAG_LOCAL_PARTIAL == 0 {
                            self.capture.insert_listener(c.conn.tgid, c.conn.fd, c.local)?;
                        }
                    }
                    self.recheck_tls(c.conn.tgid);
                }
                Ok(EventKind::ConnOpen) => {
                    if c.flags & CONN_FLAG_UNVERIFIED != 0 && !self.verify(c)? {
                        return Ok(false);
                    }
                    if c.flags & CONN_FLAG_LOCAL_PARTIAL != 0 {
                        self.fill(c);
                    }
                    self.remember(*c);
                    self.recheck_tls(c.conn.tgid);
                }
                Ok(EventKind::ConnAddr) => {
                    let Some(open) = self.open.get_mut(&(c.conn.tgid, c.conn.fd)) else {
                        return Ok(false);
                    };
                    if open.conn.generation != c.conn.generation {
                        return Ok(false);
                    }
                    open.local = c.local;
                    open.remote = c.remote;
                    open.flags &= !CONN_FLAG_LOCAL_PARTIAL;
                }
                Ok(EventKind::ConnClose) => {
                    if c.flags & CONN_FLAG_ENTRY_LEFT != 0 {
                        if self.left.len() < self.capture.options().max_conns as usize {
                            self.left.insert((c.conn.tgid, c.conn.fd));
                        } else {
                            self.stats.conn_table_full += 1;
                        }
                    }
                    let Some(open) = self.open.remove(&(c.conn.tgid, c.conn.fd)) else {
                        // A connection dropped at verification.
                        return Ok(false);
                    };
                    // The kernel's copy of the addresses may be partial; ours is resolved.
                    c.local = open.local;
                    c.remote = open.remote;
                    self.stats.open_conns = self.open.len() as u64;
                }
                _ => {}
            },
            Event::Proc(p) => match EventKind::try_from(p.header.kind) {
                Ok(EventKind::Exec) => {
                    // The kernel reports every exec so that globs can be matched here; only
                    // those of selected processes are handed on.
                    let exe = std::fs::read_link(format!("/proc/{}/exe", p.pid));
                    if let Ok(exe) = exe
                        && self.selection.exe_matches(&exe)
                    {
                        debug!("pid {} ({}) selected at exec", p.pid, exe.display());
                        self.stats.selected_at_exec += 1;
                        let selected = self.capture.set_watched(p.pid, true);
                        if self.applied(selected)? {
                            self.adopt(p.pid, &mut scan::NetTables::default())?;
                        }
                        return Ok(true);
                    }
                    let watched = self.capture.is_watched(p.pid);
                    if watched {
                        self.check_runtime(p.pid)?;
                    } else {
                        self.forget_tls(p.pid);
                    }
                    return Ok(watched);
                }
                Ok(EventKind::Exit) => {
                    let fds: Vec<u32> =
                        self.open.keys().filter(|(t, _)| *t == p.pid).map(|(_, fd)| *fd).collect();
                    for fd in fds {
                        self.open.remove(&(p.pid, fd));
                        self.capture.remove_conn(p.pid, fd);
                    }
                    let capture = &mut self.capture;
                    self.left.retain(|&(tgid, fd)| {
                        let exited = tgid == p.pid;
                        if exited {
                            capture.remove_conn(tgid, fd);
                        }
                        !exited
                    });
                    self.capture.remove_listeners_of(p.pid);
                    self.capture.forget_go(p.pid);
                    self.forget_tls(p.pid);
                    self.stats.open_conns = self.open.len() as u64;
                }
                _ => {}
            },
            Event::Data(d, _) => {
                let known = self
                    .open
                    .get(&(d.conn.tgid, d.conn.fd))
                    .is_some_and(|o| o.conn.generation == d.conn.generation);
                if !known {
                    self.stats.data_unknown_conn += 1;
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Tells the kernel when a traced program's threads do not own their requests (Go), and
    /// follows the runtimes it can (Go's goroutines, nginx's upstreams).
    fn check_runtime(&mut self, pid: u32) -> Result<(), CaptureError> {
        // An exec replaced whatever ran before (the kernel cleared its runtime bits).
        self.capture.forget_go(pid);
        self.capture.exec_tls(pid);
        self.tls_next.remove(&pid);
        self.capture.prepare_tls(pid);
        self.check_tls(pid);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if runtime::looks_like_nginx(&exe) {
            match self.capture.follow_nginx(pid) {
                Ok(()) => {
                    debug!("pid {pid} is nginx: upstream requests followed to their client requests");
                    self.stats.nginx_followed += 1;
                }
                Err(why) => {
                    let msg = format!("pid {pid} is nginx whose upstream requests stay unlinked: {why}");
                    self.not_followed(msg);
                    self.stats.nginx_not_followed += 1;
                }
            }
            return Ok(());
        }
        if runtime::is_go(Path::new(&format!("/proc/{pid}/exe"))) {
            self.stats.handoff_runtimes += 1;
            let handoff = self.capture.set_handoff(pid);
            self.applied(handoff)?;
            match self.capture.follow_go(pid) {
                Ok((version, tls)) => {
                    debug!(
                        "pid {pid} is a Go program ({version}): net/http calls followed through goroutines"
                    );
                    self.stats.go_followed += 1;
                    match tls {
                        None => {
                            debug!("pid {pid}: crypto/tls connections read in plain text");
                            self.stats.go_tls_followed += 1;
                        }
                        Some(why) => {
                            self.not_followed(format!("pid {pid}: Go TLS connections not read: {why}"))
                        }
                    }
                }
                Err(why) => {
                    self.not_followed(format!("pid {pid} is a Go program whose calls stay unlinked: {why}"));
                    self.stats.go_not_followed += 1;
                }
            }
        }
        Ok(())
    }

    /// Forgets `pid`'s TLS probes and when its library was to be looked for (it exited or exec'd).
    fn forget_tls(&mut self, pid: u32) {
        self.capture.forget_tls(pid);
        self.tls_next.remove(&pid);
    }

    /// Follows `pid`'s TLS library, if it maps one; if not, looks again at its next listen or
    /// connection, then at ones further and further apart ([`Session::recheck_tls`]).
    fn check_tls(&mut self, pid: u32) {
        let now = std::time::Instant::now();
        let (due, step) = match self.capture.follow_tls(pid) {
            Ok(Some(file)) => {
                if self.tls_next.remove(&pid).is_some() {
                    info!(
                        "pid {pid} loaded a TLS library: its TLS connections are read in plain text through {}",
                        file.display()
                    );
                } else {
                    debug!("pid {pid}: TLS connections read in plain text through {}", file.display());
                }
                self.stats.tls_followed += 1;
                return;
            }
            Ok(None) => match self.tls_next.get(&pid) {
                Some((_, step)) => (now + *step, (*step * 2).min(TLS_RECHECK_MAX)),
                // A library is often loaded just after the process starts (by the dynamic
                // loader after an exec, by an import): its first listen or connection looks.
                None => (now, TLS_RECHECK_FIRST),
            },
            Err(why) => {
                self.not_followed(format!("pid {pid}: TLS connections stay unread: {why}"));
                self.stats.tls_not_followed += 1;
                (now + TLS_RECHECK_FAILED, TLS_RECHECK_FAILED)
            }
        };
        if self.tls_next.len() < TLS_PENDING_MAX || self.tls_next.contains_key(&pid) {
            self.tls_next.insert(pid, (due, step));
        }
    }

    /// `pid` listened or opened a connection: its TLS library is looked for again if it is due.
    fn recheck_tls(&mut self, pid: u32) {
        match self.tls_next.get(&pid) {
            Some((due, _)) if std::time::Instant::now() >= *due => self.check_tls(pid),
            // A process forked from a followed one: probes are per process.
            None if !self.capture.follows_tls(pid) && self.tls_next.len() < TLS_PENDING_MAX => {
                self.check_tls(pid)
            }
            _ => {}
        }
    }

    /// Whether a change to the kernel's selection array was made. A pid beyond the array (pid_max
    /// raised since the agent started) is counted and left out, not an error that stops tracing.
    fn applied(&mut self, change: Result<(), CaptureError>) -> Result<bool, CaptureError> {
        match change {
            Ok(()) => Ok(true),
            Err(CaptureError::PidBeyondMax(pid)) => {
                if self.stats.pids_beyond_max == 0 {
                    warn!(
                        "{}: not traced; restart tracewire to cover the new pid_max",
                        CaptureError::PidBeyondMax(pid)
                    );
                }
                self.stats.pids_beyond_max += 1;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// A runtime that cannot be followed (uprobes refused, a binary without the symbols): the
    /// first one is a warning, since it often means a missing capability; the rest are counted
    /// (`go_not_followed`, `nginx_not_followed`) and logged at debug level.
    fn not_followed(&mut self, msg: String) {
        if self.warned_not_followed {
            debug!("{msg}");
        } else {
            self.warned_not_followed = true;
            warn!("{msg} (further ones at debug level)");
        }
    }

    /// An accept on a listener the kernel had not seen: check the socket is TCP, learn the
    /// listener for the next accepts, apply the port filter. Returns whether to keep it.
    fn verify(&mut self, c: &mut ConnEvent) -> Result<bool, CaptureError> {
        let (tgid, fd, lfd) = (c.conn.tgid, c.conn.fd, c.listener_fd);
        if c.remote.family != 0 {
            // accept() returned an inet peer address: a stream socket from an inet listener,
            // so TCP. Trust the kernel's view rather than the fd, which the process may have
            // closed and reused by the time this event is read. The listener is learned once.
            c.flags &= !CONN_FLAG_UNVERIFIED;
            if let Ok(Some((listen_addr, _))) = resolve::tcp_socket(tgid, lfd) {
                self.capture.insert_listener(tgid, lfd, listen_addr)?;
                let ports = &self.capture.options().ports;
                if !ports.is_empty() && !ports.contains(&listen_addr.port) {
                    self.stats.port_filtered += 1;
                    self.capture.remove_conn(tgid, fd);
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        match resolve::tcp_socket(tgid, fd) {
            Ok(Some((local, remote))) => {
                c.local = local;
                c.remote = remote;
                c.flags &= !(CONN_FLAG_UNVERIFIED | CONN_FLAG_LOCAL_PARTIAL);
                self.stats.resolved += 1;
                if let Ok(Some((listen_addr, _))) = resolve::tcp_socket(tgid, lfd) {
                    self.capture.insert_listener(tgid, lfd, listen_addr)?;
                }
                let ports = &self.capture.options().ports;
                if !ports.is_empty() && !ports.contains(&local.port) {
                    self.stats.port_filtered += 1;
                    self.capture.remove_conn(tgid, fd);
                    return Ok(false);
                }
                Ok(true)
            }
            Ok(None) => {
                // Not TCP (a unix listener): forget it, and mark the listener so the kernel
                // ignores its next accepts.
                self.stats.not_tcp += 1;
                self.capture.remove_conn(tgid, fd);
                self.capture.insert_listener(tgid, lfd, SockAddr::default())?;
                Ok(false)
            }
            Err(e) => {
                // Already closed: keep what the kernel saw; its close event follows.
                debug!("verifying pid {tgid} fd {fd}: {e}");
                self.stats.resolve_failed += 1;
                Ok(true)
            }
        }
    }

    /// Fills in addresses the kernel could not see.
    fn fill(&mut self, c: &mut ConnEvent) {
        match resolve::tcp_socket(c.conn.tgid, c.conn.fd) {
            Ok(Some((local, remote))) => {
                // A reused fd would show a different peer: keep what the kernel saw then.
                let known_remote = c.remote.family != 0;
                if known_remote && c.role != ROLE_LISTENER && !same_endpoint(&c.remote, &remote) {
                    self.stats.resolve_failed += 1;
                    return;
                }
                c.local = local;
                if c.role != ROLE_LISTENER {
                    c.remote = remote;
                }
                c.flags &= !CONN_FLAG_LOCAL_PARTIAL;
                self.stats.resolved += 1;
            }
            Ok(None) => self.stats.resolve_failed += 1,
            Err(e) => {
                debug!("resolving pid {} fd {}: {e}", c.conn.tgid, c.conn.fd);
                self.stats.resolve_failed += 1;
            }
        }
    }

    fn process(&mut self, batch: &RecordBatch, f: &mut impl FnMut(&Event<'_>)) -> Result<(), CaptureError> {
        if let Some(rec) = &mut self.recorder {
            for bytes in batch.iter() {
                rec.write(bytes).map_err(|e| CaptureError::Io("writing the recording".into(), e))?;
            }
            rec.flush().map_err(|e| CaptureError::Io("writing the recording".into(), e))?;
        }
        for bytes in batch.iter() {
            match decode(bytes) {
                Ok(mut ev) => {
                    if self.control(&mut ev)? {
                        f(&ev);
                    }
                }
                Err(e) => *self.stats.decode_errors.entry(e.reason()).or_default() += 1,
            }
        }
        Ok(())
    }

    /// Connections adopted from /proc (at start, or when an exec selects a process), handed on
    /// as if the kernel had reported them, and recorded like its records (those adopted while a
    /// poll's records were handled used to be handed on unrecorded).
    fn hand_pending(&mut self, f: &mut impl FnMut(&Event<'_>)) -> Result<(), CaptureError> {
        for c in std::mem::take(&mut self.pending) {
            let mut ev = Event::Conn(c);
            if let Some(rec) = &mut self.recorder {
                rec.write(&crate::events::decode::encode::encode(&ev))
                    .map_err(|e| CaptureError::Io("writing the recording".into(), e))?;
            }
            if self.control(&mut ev)? {
                f(&ev);
            }
        }
        Ok(())
    }

    /// Polls after which what the ring held when they started has been read: a poll takes up to
    /// [`POLL_BYTES`], so stopping takes this many at most (traced processes keep writing).
    pub fn drain_polls(&self) -> usize {
        self.capture.options().ring_bytes as usize / POLL_BYTES + 1
    }

    /// Waits up to `timeout`, then hands available events to `f` (a bounded share of the ring:
    /// see [`POLL_BYTES`]). Returns the number of ring records read.
    pub fn poll(&mut self, timeout: Duration, mut f: impl FnMut(&Event<'_>)) -> Result<usize, CaptureError> {
        if self.go_checked.elapsed() >= GO_CHECK_EVERY {
            self.go_checked = std::time::Instant::now();
            self.capture.follow_goroutine_creation();
        }
        self.hand_pending(&mut f)?;
        // Records are copied out of the ring into one reused buffer (the ring borrow must end
        // before `control` needs `&mut self`); nothing is allocated per record. A poll takes a
        // bounded share of a full ring: what the records become downstream (spans, export
        // batches) is then bounded too, and the rest waits in the ring, which is there for it.
        let mut batch = std::mem::take(&mut self.batch);
        batch.clear();
        self.capture.poll(timeout, POLL_BYTES, |bytes| batch.push(bytes))?;
        let records = batch.len();
        self.stats.records += records as u64;
        let result = self.process(&batch, &mut f);
        self.batch = batch;
        result?;
        self.hand_pending(&mut f)?;
        Ok(records)
    }
}

fn same_endpoint(a: &SockAddr, b: &SockAddr) -> bool {
    fn norm(s: &SockAddr) -> (u16, [u8; 16]) {
        // ::ffff:a.b.c.d and a.b.c.d are the same peer.
        if s.family == tracewire_common::FAMILY_V6
            && s.addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
        {
            let mut v4 = [0u8; 16];
            v4[..4].copy_from_slice(&s.addr[12..]);
            return (s.port, v4);
        }
        (s.port, s.addr)
    }
    norm(a) == norm(b)
}
