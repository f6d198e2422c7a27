//! The only module that touches aya: checks the host, loads and attaches the kernel programs,
//! manages the selection and connection maps, and hands raw ring-buffer records to the caller.
//!
//! Everything after the ring buffer (`events`, and the stages after it) is pure and runs on
//! recorded records just as well.
pub mod btf;
pub mod error;
pub mod inject;
pub mod preflight;
pub mod programs;
pub mod resolve;
pub mod runtime;
pub mod scan;
pub mod select;
pub mod session;
pub mod watched;

use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, RawTracePoint, SockOps, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};
pub use error::CaptureError;
use log::{debug, info, warn};
use tracewire_common::{
    CFG_INJECT, CFG_PARENT_BASED, CFG_SKIP_UNSAMPLED, CFG_SOCKET_LIFECYCLE, CFG_TCP_OPTION, COUNTER_COUNT,
    Config, ConnId, ConnState, Counter, DEFAULT_MAX_CONNS, DEFAULT_PAYLOAD, DEFAULT_RING_BYTES, GoProc,
    ListenerState, MAX_PAYLOAD, ROLE_CLIENT, SAMPLE_ALL, SELECT_ALL, SELECT_WATCHED, SockAddr, WATCH_CLIENTS,
    WATCH_GO, WATCH_GO_TLS, WATCH_HANDOFF, WATCH_SELECTED, WATCH_TLS, fd_key, maps,
};

pub use select::Selection;

/// The kernel object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracewire"));

/// Capture settings.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Which processes to trace.
    pub selection: Selection,
    /// Only connections whose server port (local for accepted, remote for connected) is listed.
    pub ports: Vec<u16>,
    /// Payload bytes copied per read/write.
    pub payload_cap: u32,
    /// Connections tracked at once.
    pub max_conns: u32,
    /// Ring buffer size in bytes.
    pub ring_bytes: u32,
    /// Wake the reader once this many bytes wait (0 = every event).
    pub wakeup_bytes: u64,
    /// Send and receive trace context in a TCP option (agent to agent, across nodes).
    pub tcp_option: bool,
    /// Head sampling of traces started in the kernel (see [`Config::sample_threshold`]).
    pub sample_threshold: u64,
    /// The sampler follows a remote parent's sampled flag.
    pub parent_based: bool,
    /// Head rate limiting of traces started in the kernel (see [`Config::rate_interval_ns`]).
    pub rate_interval_ns: u64,
    /// Leave requests that are not sampled unreported, in the kernel (needs the TCP option, so
    /// that both ends of a connection decide alike).
    pub skip_unsampled: bool,
    /// Which hooks carry the bytes.
    pub data_hooks: DataHooks,
    /// Insert `traceparent` into the selected processes' outgoing HTTP/1 requests that have none.
    pub inject: bool,
    /// Inject even where sockets in a sockhash misreport FIONREAD.
    pub inject_despite_fionread: bool,
    /// Follow outgoing calls through the runtimes whose threads serve many requests at once:
    /// Go's goroutines and nginx's upstreams (uprobes).
    pub uprobes: bool,
}

/// The hooks that see the bytes of reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataHooks {
    /// The socket hooks where the kernel has them, else the syscall hooks.
    #[default]
    Auto,
    /// Socket-layer tracepoints (Linux 6.16+): only socket I/O runs programs.
    Sockets,
    /// raw_syscalls sys_enter/sys_exit: every syscall of every process runs a program.
    Syscalls,
}

impl DataHooks {
    pub fn name(self) -> &'static str {
        match self {
            DataHooks::Auto => "auto",
            DataHooks::Sockets => "sockets",
            DataHooks::Syscalls => "syscalls",
        }
    }
}

/// The bytes of records each CPU writes between two wakeups of the reader (0: every record
/// wakes it): `requested`, but no more than the ring's size over four CPUs' worth, so that all
/// CPUs together cannot fill the ring before one of them wakes the reader (a small ring, or
/// many CPUs, would otherwise overflow with the reader asleep until its poll timer). The kernel
/// tests crossings with a mask: rounded down to a power of two.
fn wakeup_step(requested: u64, ring_bytes: u64, cpus: u32) -> u64 {
    if requested == 0 {
        return 0;
    }
    let room = (ring_bytes / 4 / u64::from(cpus.max(1))).max(1);
    1 << requested.min(room).ilog2()
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            selection: Selection::All,
            ports: Vec::new(),
            payload_cap: DEFAULT_PAYLOAD,
            max_conns: DEFAULT_MAX_CONNS,
            ring_bytes: DEFAULT_RING_BYTES,
            wakeup_bytes: 256 * 1024,
            tcp_option: true,
            sample_threshold: SAMPLE_ALL,
            parent_based: true,
            rate_interval_ns: 0,
            skip_unsampled: true,
            data_hooks: DataHooks::Auto,
            inject: false,
            inject_despite_fionread: false,
            uprobes: true,
        }
    }
}

/// Loaded and attached programs. Dropping it detaches everything: links are owned by file
/// descriptors, nothing is pinned, so an agent that exits (or crashes) leaves no programs behind.
pub struct Capture {
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    watched: watched::Watched,
    conns: HashMap<MapData, u64, ConnState>,
    listeners: HashMap<MapData, u64, ListenerState>,
    options: CaptureOptions,
    attached: usize,
    tcp_option: Option<PathBuf>,
    skip_unsampled: bool,
    data_hooks: DataHooks,
    inject: inject::InjectState,
    /// Binaries whose runtime functions carry uprobes (Go, nginx).
    followed: Followed,
    // Keeps programs and links alive; declared last so maps are released after links.
    ebpf: Ebpf,
}

/// Binaries followed so far (at most [`MAX_FOLLOWED_BINARIES`]), by (device, inode): the
/// uprobes sit on the file, once for every process that runs it.
#[derive(Default)]
struct Followed {
    /// False when uprobes are off (configuration) or their programs did not load.
    on: bool,
    /// False when uprobes are off or the TLS programs did not load.
    tls_on: bool,
    /// False when uprobes are off or the Go `crypto/tls` programs did not load.
    go_tls_on: bool,
    /// Go binaries: what each is, or why its calls are not followed.
    go: std::collections::HashMap<(u64, u64), Result<runtime::GoBinary, String>>,
    /// The probes of each followed Go process.
    go_links: std::collections::HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
    /// Followed Go processes whose goroutine creation is to be followed from their first
    /// net/http call on.
    go_pending: std::collections::HashMap<u32, runtime::GoAncestry>,
    /// nginx binaries: followed, or why not.
    nginx: std::collections::HashMap<(u64, u64), Result<(), String>>,
    /// Files inspected for a TLS library's API (executables, `libssl`): what was found, or why
    /// not.
    tls: std::collections::HashMap<runtime::FileKey, Result<runtime::TlsLibrary, String>>,
    /// How TLS library probes are scoped (see [`TlsScope`]).
    tls_scope: TlsScope,
    /// [`TlsScope::PerFile`]: the probes of each TLS library file, for every process.
    tls_files: std::collections::HashMap<runtime::FileKey, Vec<(&'static str, UProbeLinkId)>>,
    /// The processes whose TLS library is (or may be) probed, and their own probes.
    tls_procs: std::collections::HashMap<u32, ProcTls>,
    /// Where TLS libraries were found, as paths inside a process's root (the host's libraries,
    /// those mapped by processes since): a selected process is probed on the ones its root has
    /// from its exec on (see [`Capture::prepare_tls`]). At most [`MAX_KNOWN_TLS_PATHS`].
    tls_known: Vec<PathBuf>,
}

/// How the probes on a TLS library are scoped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum TlsScope {
    /// Every process is selected: each library file is probed once, for every process that maps
    /// it, now or later. A process that starts and makes its TLS connection at once is read from
    /// its first call when its library was known before (the host's are from the start).
    PerFile,
    /// Some processes are selected: each is probed on its own, so that the others never stop on
    /// the probes (a uprobe's stop costs microseconds). A selected process is probed on the known
    /// libraries from its exec, before it maps them.
    #[default]
    PerProcess,
}

/// A process's TLS probes.
#[derive(Default)]
struct ProcTls {
    /// Probes of this process alone ([`TlsScope::PerProcess`]).
    links: Vec<(&'static str, UProbeLinkId)>,
    /// The files they sit on (as `stat` names them).
    files: Vec<runtime::FileKey>,
    /// Whether a file it maps is probed (not only one it may map).
    mapped: bool,
}

/// The file `path` names, as `stat` does (device, inode).
fn stat_key(path: &Path) -> Result<runtime::FileKey, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((meta.dev(), meta.ino()))
}

/// Paths of TLS libraries remembered for the processes to come.
const MAX_KNOWN_TLS_PATHS: usize = 16;

/// Distinct binaries whose functions get uprobes; beyond it, their calls stay unlinked.
pub const MAX_FOLLOWED_BINARIES: usize = 64;
/// Go processes followed at once (the size of the kernel's `GO_PROCS`).
pub const MAX_GO_PROCESSES: usize = 4096;

/// The nginx uprobe programs (see the kernel's `nginx` probes): entry and return of
/// `ngx_http_upstream_init`, then of `ngx_event_connect_peer`.
const NGINX_PROGRAMS: [&str; 4] =
    ["ngx_upstream_init", "ngx_upstream_init_ret", "ngx_connect_peer", "ngx_connect_peer_ret"];

const GO_PROGRAMS: [&str; 3] = ["go_round_trip", "go_request_write", "go_new_goroutine"];

/// The `crypto/tls` uprobe programs (see the kernel's `gotls` probes): handshake, write, read,
/// the read's copy of its plaintext; and the HTTP/2 server's stream start (`go_h2_headers`).
const GO_TLS_PROGRAMS: [&str; 5] =
    ["go_tls_handshake", "go_tls_write", "go_tls_read", "go_tls_read_copy", "go_h2_headers"];

/// The TLS uprobe programs (see the kernel's `tls` probes and [`runtime::TLS_FUNCTIONS`]).
const TLS_PROGRAMS: [&str; 8] = [
    "ssl_read",
    "ssl_read_ex",
    "ssl_write",
    "ssl_write_ex",
    "ssl_handshake",
    "ssl_read_ret",
    "ssl_write_ret",
    "ssl_handshake_ret",
];
/// Processes whose TLS library is followed at once.
pub const MAX_TLS_PROCESSES: usize = 4096;
/// Files inspected for a TLS library at most (executables and libraries, by device and inode).
const MAX_TLS_FILES: usize = 1024;

/// Loads the uprobe programs `names` (they are attached per binary, see [`Capture::follow_go`],
/// [`Capture::follow_nginx`] and [`Capture::follow_tls`]). A kernel that refuses them leaves
/// what they follow unfollowed, and says so (`what`).
fn load_uprobe_programs(ebpf: &mut Ebpf, names: &[&'static str], what: &str) -> bool {
    for &name in names {
        let loaded = match ebpf.program_mut(name).map(<&mut UProbe>::try_from) {
            Some(Ok(p)) => p.load().map_err(|e| e.to_string()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("missing from the object".into()),
        };
        if let Err(e) = loaded {
            warn!("{what}: uprobe program {name}: {e}");
            return false;
        }
    }
    true
}

/// Loads the tracepoint programs `names`, each in a thread of its own. Loading is where the
/// kernel verifies a program, in the loading thread, and that is most of tracewire's start-up:
/// the two socket data programs take 0.5-0.8 s each on a 2-core VM. Loading attaches nothing, so
/// the order programs are attached in (see the caller) is kept.
fn load_in_parallel(ebpf: &mut Ebpf, names: &[&'static str]) -> Result<(), CaptureError> {
    // A name missing from the object is reported when the caller attaches it.
    let found: Vec<(&'static str, &mut aya::programs::Program)> = ebpf
        .programs_mut()
        .filter_map(|(name, prog)| names.iter().find(|n| **n == name).map(|&n| (n, prog)))
        .collect();
    std::thread::scope(|scope| {
        let loads: Vec<_> = found
            .into_iter()
            .map(|(name, prog)| {
                let load = move || match prog {
                    aya::programs::Program::TracePoint(p) => p.load(),
                    aya::programs::Program::RawTracePoint(p) => p.load(),
                    _ => Err(aya::programs::ProgramError::UnexpectedProgramType),
                };
                (name, std::thread::Builder::new().name("tracewire-load".into()).spawn_scoped(scope, load))
            })
            .collect();
        for (name, load) in loads {
            let load = load.map_err(|e| CaptureError::Io(format!("starting a thread to load {name}"), e))?;
            match load.join() {
                Ok(result) => result.map_err(|e| CaptureError::Program { program: name, source: e })?,
                Err(_) => return Err(CaptureError::LoadThread(name)),
            }
        }
        Ok(())
    })
}

/// Attaches the TCP-option program to the cgroup2 root with a BPF link. Links to a cgroup always
/// coexist with other programs there (another agent, a CNI), and the link's own flags must be
/// empty, which is what the `Single` mode sends.
fn attach_sock_ops(ebpf: &mut Ebpf, root: &Path) -> Result<(), CaptureError> {
    const NAME: &str = "tcp_option";
    let prog: &mut SockOps = ebpf
        .program_mut(NAME)
        .ok_or(CaptureError::MissingProgram(NAME))?
        .try_into()
        .map_err(|e| CaptureError::Program { program: NAME, source: e })?;
    prog.load().map_err(|e| CaptureError::Program { program: NAME, source: e })?;
    let dir =
        std::fs::File::open(root).map_err(|e| CaptureError::Io(format!("opening {}", root.display()), e))?;
    prog.attach(dir, CgroupAttachMode::Single)
        .map_err(|e| CaptureError::Program { program: NAME, source: e })?;
    Ok(())
}

/// Values of the selection array for `pid_max` processes, eight to a value.
fn watched_entries(pid_max: u32) -> u32 {
    pid_max.div_ceil(8).max(1)
}

/// Counters summed over CPUs, indexed by [`Counter`].
pub type KernelCounters = [u64; COUNTER_COUNT as usize];

impl Capture {
    /// Checks the host, loads and attaches every program. Errors name what is missing.
    pub fn start(options: CaptureOptions) -> Result<Self, CaptureError> {
        let host = preflight::check()?;
        if options.payload_cap as usize > MAX_PAYLOAD {
            return Err(CaptureError::Config(format!(
                "payload cap {} exceeds the maximum of {MAX_PAYLOAD} bytes",
                options.payload_cap
            )));
        }
        if !options.ring_bytes.is_power_of_two() || options.ring_bytes < 4096 {
            return Err(CaptureError::Config(format!(
                "ring buffer size {} must be a power of two of at least 4096 bytes",
                options.ring_bytes
            )));
        }
        if options.inject && matches!(options.selection, Selection::All) {
            return Err(CaptureError::Config(
                "traceparent injection changes what services send: select the workloads it applies to \
                 (--pid, --exe or --cgroup)"
                    .into(),
            ));
        }
        if options.inject && !options.tcp_option {
            return Err(CaptureError::Config(
                "traceparent injection needs the sock_ops program that the TCP option uses: drop --no-tcp-option".into(),
            ));
        }
        // The TCP option needs the sock_ops program on the cgroup2 root (every socket of the
        // node). Without a cgroup2 mount tracing still works; only the option is off.
        let cgroup_root = if options.tcp_option {
            match select::cgroup2_mount() {
                Ok(root) => Some(root),
                Err(e) => {
                    warn!("trace context in TCP options is off: {e}");
                    None
                }
            }
        } else {
            None
        };
        let data_hooks = match options.data_hooks {
            DataHooks::Auto if preflight::has_tracepoints(&host.tracefs, programs::SOCKET_DATA_PROGRAMS) => {
                DataHooks::Sockets
            }
            DataHooks::Auto => {
                info!(
                    "this kernel lacks the socket tracepoints (Linux 6.16+): data through the syscall hooks"
                );
                DataHooks::Syscalls
            }
            DataHooks::Sockets
                if !preflight::has_tracepoints(&host.tracefs, programs::SOCKET_DATA_PROGRAMS) =>
            {
                return Err(CaptureError::TracepointFormat {
                    tracepoint: "tcp/tcp_sendmsg_locked, sock/sock_send_length, sock/sock_recv_length".into(),
                    problem: "not all exist on this kernel (Linux 6.16+); use --data-hooks syscalls".into(),
                });
            }
            other => other,
        };
        // The socket path reads a socket's addresses from the socket itself, and opens accepted
        // connections from them: without the layout (no IPv6 in the kernel's BTF, say) the
        // syscall path, whose addresses come from the syscalls and tcp_rcv_space_adjust records.
        let sk =
            if data_hooks == DataHooks::Sockets { btf::sock_offsets(Path::new(&host.btf)) } else { None };
        let data_hooks = match (data_hooks, sk) {
            (DataHooks::Sockets, None) if options.data_hooks == DataHooks::Sockets => {
                return Err(CaptureError::TracepointFormat {
                    tracepoint: "sock/sock_recv_length".into(),
                    problem: format!(
                        "struct sock_common not found in {}; use --data-hooks syscalls",
                        host.btf
                    ),
                });
            }
            (DataHooks::Sockets, None) => {
                info!("struct sock_common not found in {}: data through the syscall hooks", host.btf);
                DataHooks::Syscalls
            }
            (hooks, _) => hooks,
        };
        let sk = sk.unwrap_or_default();
        let cpus =
            aya::util::nr_cpus().map_err(|(path, e)| CaptureError::Io(format!("reading {path}"), e))? as u32;
        let config = Config {
            self_tgid: std::process::id(),
            select: if matches!(options.selection, Selection::All) { SELECT_ALL } else { SELECT_WATCHED },
            payload_cap: options.payload_cap,
            port_filter: u32::from(!options.ports.is_empty()),
            fork_child_pid_offset: host.fork_child_pid_offset,
            flags: if cgroup_root.is_some() { CFG_TCP_OPTION } else { 0 }
                | if options.parent_based { CFG_PARENT_BASED } else { 0 }
                | if options.skip_unsampled && cgroup_root.is_some() { CFG_SKIP_UNSAMPLED } else { 0 }
                | if options.inject && cgroup_root.is_some() { CFG_INJECT } else { 0 }
                | if data_hooks == DataHooks::Sockets { CFG_SOCKET_LIFECYCLE } else { 0 },
            wakeup_bytes: wakeup_step(options.wakeup_bytes, u64::from(options.ring_bytes), cpus),
            sample_threshold: options.sample_threshold,
            rate_interval_ns: options.rate_interval_ns,
            sk,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("TRACEWIRE_CONFIG", &config, true)
            .map_max_entries(maps::WATCHED, watched_entries(host.pid_max))
            .map_max_entries(maps::CONNS, options.max_conns)
            .map_max_entries(maps::EVENTS, options.ring_bytes)
            .map_max_entries(maps::SCRATCH, cpus)
            .load(EBPF_OBJECT)
            .map_err(CaptureError::Load)?;

        let mut attached = 0;
        let lifecycle: &[programs::ProgramSpec] =
            if data_hooks == DataHooks::Syscalls { programs::SYSCALL_LIFECYCLE_PROGRAMS } else { &[] };
        let data_programs = if data_hooks == DataHooks::Sockets {
            programs::SOCKET_DATA_PROGRAMS
        } else {
            programs::SYSCALL_DATA_PROGRAMS
        };
        let names: Vec<&'static str> = programs::PROGRAMS
            .iter()
            .chain(lifecycle)
            .map(|p| p.program)
            .chain(data_programs.iter().map(|(name, _, _)| *name))
            .collect();
        load_in_parallel(&mut ebpf, &names)?;
        // Attached in order once all are loaded: lifecycle hooks first, so that a connection is
        // known before data on it can arrive.
        for p in programs::PROGRAMS.iter().chain(lifecycle) {
            let prog: &mut TracePoint = ebpf
                .program_mut(p.program)
                .ok_or(CaptureError::MissingProgram(p.program))?
                .try_into()
                .map_err(|e| CaptureError::Program { program: p.program, source: e })?;
            prog.attach(p.category, p.tracepoint)
                .map_err(|e| CaptureError::Program { program: p.program, source: e })?;
            attached += 1;
        }
        for (name, _, tracepoint) in data_programs {
            let prog: &mut RawTracePoint = ebpf
                .program_mut(name)
                .ok_or(CaptureError::MissingProgram(name))?
                .try_into()
                .map_err(|e| CaptureError::Program { program: name, source: e })?;
            prog.attach(tracepoint).map_err(|e| CaptureError::Program { program: name, source: e })?;
            attached += 1;
        }
        let tcp_option = match cgroup_root {
            Some(root) => match attach_sock_ops(&mut ebpf, &root) {
                Ok(()) => {
                    attached += 1;
                    Some(root)
                }
                // The kernel may lack sock_ops header options (before 5.10) or refuse the
                // attach: tracing goes on, context only travels in headers.
                Err(e) => {
                    warn!("trace context in TCP options is off: {e}");
                    None
                }
            },
            None => None,
        };
        let inject = if config.flags & CFG_INJECT != 0 && tcp_option.is_some() {
            let state = inject::start(&mut ebpf, options.inject_despite_fionread)?;
            if state == inject::InjectState::On {
                attached += 1;
            }
            state
        } else if options.inject {
            inject::InjectState::Refused("no cgroup2 mount for the sock_ops program".into())
        } else {
            inject::InjectState::Off
        };
        let followed = Followed {
            on: options.uprobes
                && load_uprobe_programs(
                    &mut ebpf,
                    &[GO_PROGRAMS.as_slice(), NGINX_PROGRAMS.as_slice()].concat(),
                    "calls are not followed through Go or nginx",
                ),
            tls_on: options.uprobes
                && load_uprobe_programs(&mut ebpf, &TLS_PROGRAMS, "TLS connections are not read"),
            go_tls_on: options.uprobes
                && load_uprobe_programs(&mut ebpf, &GO_TLS_PROGRAMS, "Go's TLS connections are not read"),
            tls_scope: if matches!(options.selection, Selection::All) {
                TlsScope::PerFile
            } else {
                TlsScope::PerProcess
            },
            ..Followed::default()
        };
        debug!("attached {attached} programs");

        let take =
            |ebpf: &mut Ebpf, name: &'static str| ebpf.take_map(name).ok_or(CaptureError::MissingMap(name));
        let ring = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?).map_err(CaptureError::Map)?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, maps::COUNTERS)?).map_err(CaptureError::Map)?;
        let watched = watched::Watched::map(
            Array::try_from(take(&mut ebpf, maps::WATCHED)?).map_err(CaptureError::Map)?,
        )?;
        let conns = HashMap::try_from(take(&mut ebpf, maps::CONNS)?).map_err(CaptureError::Map)?;
        let listeners = HashMap::try_from(take(&mut ebpf, maps::LISTENERS)?).map_err(CaptureError::Map)?;
        let mut ports: HashMap<MapData, u16, u8> =
            HashMap::try_from(take(&mut ebpf, maps::PORTS)?).map_err(CaptureError::Map)?;
        for port in &options.ports {
            ports.insert(port, 1, 0).map_err(CaptureError::Map)?;
        }
        {
            let paths = options.selection.cgroups();
            let mut cgroups: HashMap<MapData, u64, u8> =
                HashMap::try_from(take(&mut ebpf, maps::CGROUPS)?).map_err(CaptureError::Map)?;
            for path in paths {
                let id = select::cgroup_id(path)?;
                cgroups.insert(id, 1, 0).map_err(CaptureError::Map)?;
            }
        }
        info!(
            "{attached} programs attached (kernel {}, data through the {} hooks, payload cap {} B, ring {} KiB)",
            host.kernel,
            data_hooks.name(),
            options.payload_cap,
            options.ring_bytes / 1024
        );
        if let Some(root) = &tcp_option {
            info!("trace context travels in TCP options (sock_ops on {})", root.display());
        }
        crate::alloc::running();
        let skip_unsampled = config.flags & CFG_SKIP_UNSAMPLED != 0;
        let mut capture = Capture {
            ring,
            counters,
            watched,
            conns,
            listeners,
            options,
            attached,
            tcp_option,
            data_hooks,
            inject,
            skip_unsampled,
            followed,
            ebpf,
        };
        capture.probe_host_tls();
        Ok(capture)
    }

    /// Whether the kernel leaves unsampled requests unreported.
    pub fn skips_unsampled(&self) -> bool {
        self.skip_unsampled
    }

    /// Whether `traceparent` injection runs.
    pub fn inject(&self) -> &inject::InjectState {
        &self.inject
    }

    /// The hooks that carry the bytes (never `Auto` once started).
    pub fn data_hooks(&self) -> DataHooks {
        self.data_hooks
    }

    /// The cgroup2 root the TCP-option program is attached to, when it is.
    pub fn tcp_option(&self) -> Option<&Path> {
        self.tcp_option.as_deref()
    }

    /// Number of attached programs.
    pub fn attached(&self) -> usize {
        self.attached
    }

    /// The options this capture runs with.
    pub fn options(&self) -> &CaptureOptions {
        &self.options
    }

    /// Waits up to `timeout` for records, then hands available records to `f`, up to about
    /// `max_bytes` of them (the rest wait in the ring for the next call, which then returns at
    /// once). Returns the number of records read. Wakeups are batched in the kernel, so the
    /// timeout is also the longest a record waits when traffic is light.
    pub fn poll(
        &mut self,
        timeout: Duration,
        max_bytes: usize,
        mut f: impl FnMut(&[u8]),
    ) -> Result<usize, CaptureError> {
        let mut n = 0;
        let mut bytes = 0;
        while bytes < max_bytes
            && let Some(item) = self.ring.next()
        {
            f(&item);
            bytes += item.len();
            n += 1;
        }
        if n > 0 {
            return Ok(n);
        }
        let mut pfd = libc::pollfd { fd: self.ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(CaptureError::Io("poll on ring buffer".into(), err));
            }
        }
        while bytes < max_bytes
            && let Some(item) = self.ring.next()
        {
            f(&item);
            bytes += item.len();
            n += 1;
        }
        Ok(n)
    }

    /// Kernel counters summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, CaptureError> {
        let mut out = [0u64; COUNTER_COUNT as usize];
        for c in Counter::ALL {
            let values = self.counters.get(&(c as u32), 0).map_err(CaptureError::Map)?;
            out[c as usize] = values.iter().sum();
        }
        Ok(out)
    }

    /// Marks `tgid` as selected (or not).
    pub fn set_watched(&mut self, tgid: u32, on: bool) -> Result<(), CaptureError> {
        if on { self.watched.set(tgid, WATCH_SELECTED) } else { self.watched.clear(tgid, WATCH_SELECTED) }
    }

    /// Marks `tgid` as a process whose threads hand requests to each other (see
    /// [`tracewire_common::WATCH_HANDOFF`]), keeping its selection.
    pub fn set_handoff(&mut self, tgid: u32) -> Result<(), CaptureError> {
        self.watched.set(tgid, WATCH_HANDOFF)
    }

    /// Follows the net/http calls of Go program `tgid` through its goroutines: uprobes on its
    /// binary (once per binary), and the kernel told where its runtime keeps goroutine ids.
    /// Its `crypto/tls` connections' plaintext is read too where the binary allows. Returns the
    /// Go version when followed and why its TLS is not read (`None`: it is), or why not followed.
    ///
    /// The probes are scoped to the process: another process running the same binary that is
    /// not selected never stops on them.
    ///
    /// The caller forgets the pid's earlier program first ([`Capture::forget_go`]).
    pub fn follow_go(&mut self, tgid: u32) -> Result<(String, Option<String>), String> {
        let (exe, key) = self.followable(tgid)?;
        let mut bin = match self.followed.go.entry(key).or_insert_with(|| runtime::inspect_go(&exe)) {
            Ok(bin) => bin.clone(),
            Err(why) => return Err(why.clone()),
        };
        if self.followed.go_links.len() >= MAX_GO_PROCESSES {
            return Err(format!("already following {MAX_GO_PROCESSES} Go processes"));
        }
        if !self.followed.go_tls_on && bin.tls.is_ok() {
            bin.tls = Err("its programs did not load".into());
        }
        let links = self.attach_go(tgid, &exe, &bin)?;
        self.followed.go_links.insert(tgid, links);
        // Goroutine creation is followed from the first net/http call on (see `calls`).
        if let Some(a) = bin.ancestry.take() {
            self.followed.go_pending.insert(tgid, a);
        }
        let mut procs: HashMap<&mut MapData, u32, GoProc> = self
            .ebpf
            .map_mut(maps::GO_PROCS)
            .ok_or("no GO_PROCS map")
            .and_then(|m| HashMap::try_from(m).map_err(|_| "GO_PROCS: wrong map type"))?;
        // Ancestry offsets stay 0 (off) until goroutine creation is followed.
        let fd = bin.conn_fd;
        let tls = bin.tls.as_ref().ok();
        let proc = GoProc {
            goid_offset: bin.goid_offset,
            pc_conn: fd.map_or(0, |f| f.pc_conn),
            tcp_fd: fd.map_or(0, |f| f.tcp_fd),
            netfd_sysfd: fd.map_or(0, |f| f.netfd_sysfd),
            tcp_itab: fd.map_or(0, |f| f.tcp_itab),
            tls_conn: tls.map_or(0, |t| t.tls_conn),
            tls: u32::from(tls.is_some()),
            tls_itab: tls.map_or(0, |t| t.tls_itab),
            h2_conn: tls.and_then(|t| t.h2_server).map_or(0, |(_, off)| off),
            read_conn_at: tls.and_then(|t| t.read_conn_at).unwrap_or(0),
            ..GoProc::default()
        };
        procs.insert(tgid, proc, 0).map_err(|e| e.to_string())?;
        let bits = if tls.is_some() { WATCH_GO | WATCH_GO_TLS } else { WATCH_GO };
        self.watched.set(tgid, bits).map_err(|e| e.to_string())?;
        Ok((bin.version, bin.tls.err()))
    }

    /// Follows nginx program `tgid`'s upstream requests to the client requests they are made
    /// for: uprobes on its binary, once per binary and for every process running it, since
    /// nginx forks its workers (and respawns them) without an exec. A process that runs the
    /// same file and is not selected stops on them only to return at once.
    pub fn follow_nginx(&mut self, tgid: u32) -> Result<(), String> {
        let (exe, key) = self.followable(tgid)?;
        if !self.followed.nginx.contains_key(&key) {
            let found = runtime::inspect_nginx(&exe).and_then(|bin| {
                for (name, offset) in NGINX_PROGRAMS.into_iter().zip([
                    bin.upstream_init,
                    bin.upstream_init,
                    bin.connect_peer,
                    bin.connect_peer,
                ]) {
                    self.attach_uprobe(name, &exe, offset, UProbeScope::AllProcesses)?;
                }
                Ok(())
            });
            self.followed.nginx.insert(key, found);
        }
        self.followed.nginx.get(&key).cloned().unwrap_or_else(|| Err("not inspected".into()))
    }

    /// Probes the host's TLS libraries before any process maps them (see
    /// [`runtime::system_tls_libraries`]): every process to come when all are selected, each
    /// selected process from its exec on otherwise ([`Capture::prepare_tls`]).
    fn probe_host_tls(&mut self) {
        if !self.followed.tls_on {
            return;
        }
        // The host's root is the first process's (the agent's own in a container is its image);
        // where that one is closed to the agent (another user namespace's), the agent's root.
        let host = Path::new("/proc/1/root");
        let root = if std::fs::read_dir(host).is_ok() { host } else { Path::new("/") };
        let mut probed = Vec::new();
        for lib in runtime::system_tls_libraries(root) {
            let Ok(found) = self.inspected_tls(&lib) else { continue };
            self.know_tls_path(&lib.in_root);
            if self.followed.tls_scope == TlsScope::PerFile
                && let Some(key) = lib.key
            {
                match self.probe_tls_file(key, &lib.path, &found) {
                    Ok(()) => probed.push(lib.in_root.display().to_string()),
                    Err(why) => warn!("{}: TLS library not probed: {why}", lib.in_root.display()),
                }
            }
        }
        if !probed.is_empty() {
            info!(
                "the host's TLS libraries are read for every process from its first call: {}",
                probed.join(", ")
            );
        }
    }

    /// Follows the plaintext of `tgid`'s TLS connections: uprobes on the OpenSSL API of its
    /// executable (a static build) or of the `libssl` it maps ([`TlsScope`] says for which
    /// processes). Returns the file probed, `None` when the process maps no TLS library (yet:
    /// one loaded later is found by a later call), or why it cannot be followed.
    pub fn follow_tls(&mut self, tgid: u32) -> Result<Option<PathBuf>, String> {
        if !self.followed.tls_on {
            return Err("uprobes off".into());
        }
        if self.follows_tls(tgid) {
            return Ok(None);
        }
        let mut failed = None;
        for (i, file) in runtime::tls_candidates(tgid).into_iter().enumerate() {
            let lib = match self.inspected_tls(&file) {
                Ok(lib) => lib,
                // The executable (the first candidate) most often has no TLS library in it.
                Err(why) if i > 0 => {
                    failed = Some(format!("{}: {why}", file.path.display()));
                    continue;
                }
                Err(_) => continue,
            };
            if i > 0 {
                self.know_tls_path(&file.in_root);
            }
            self.probe_tls_for(tgid, &file, &lib)?;
            // The kernel marks the process (WATCH_TLS) at its first call into the library.
            if let Some(p) = self.followed.tls_procs.get_mut(&tgid) {
                p.mapped = true;
            }
            return Ok(Some(file.path));
        }
        failed.map_or(Ok(None), Err)
    }

    /// Probes a selected process that has just started (or exec'd) on the TLS libraries known so
    /// far that its root holds, before it maps one: the dynamic loader maps `libssl` and the
    /// program may make its first TLS call before the agent has read the exec, let alone the
    /// mapping (the kernel puts the breakpoints in as the file is mapped). Probes per process
    /// only; with [`TlsScope::PerFile`] the files are probed for every process already.
    pub fn prepare_tls(&mut self, tgid: u32) {
        if !self.followed.tls_on || self.followed.tls_scope == TlsScope::PerFile {
            return;
        }
        for in_root in self.followed.tls_known.clone() {
            let file = runtime::TlsCandidate {
                path: PathBuf::from(format!("/proc/{tgid}/root{}", in_root.display())),
                in_root,
                key: None,
            };
            let Ok(lib) = self.inspected_tls(&file) else { continue };
            if let Err(why) = self.probe_tls_for(tgid, &file, &lib) {
                debug!("pid {tgid}: {} not probed ahead: {why}", file.in_root.display());
                return;
            }
        }
    }

    /// What `file` holds of OpenSSL's API (inspected once per file), or why not.
    fn inspected_tls(&mut self, file: &runtime::TlsCandidate) -> Result<runtime::TlsLibrary, String> {
        let key = match file.key {
            Some(key) => key,
            None => stat_key(&file.path)?,
        };
        if !self.followed.tls.contains_key(&key) {
            if self.followed.tls.len() >= MAX_TLS_FILES {
                return Err(format!("already inspected {MAX_TLS_FILES} files for TLS libraries"));
            }
            self.followed.tls.insert(key, runtime::inspect_tls(&file.path));
        }
        self.followed.tls.get(&key).cloned().unwrap_or_else(|| Err("not inspected".into()))
    }

    /// Remembers where a TLS library was found, for the processes to come.
    fn know_tls_path(&mut self, in_root: &Path) {
        let known = &mut self.followed.tls_known;
        if !known.iter().any(|p| p == in_root) && known.len() < MAX_KNOWN_TLS_PATHS {
            known.push(in_root.to_path_buf());
        }
    }

    /// Probes `file` (holding `lib`) for `tgid`, as the scope says: the file for every process
    /// (once), or for this process (once per file).
    fn probe_tls_for(
        &mut self,
        tgid: u32,
        file: &runtime::TlsCandidate,
        lib: &runtime::TlsLibrary,
    ) -> Result<(), String> {
        match (self.followed.tls_scope, file.key) {
            (TlsScope::PerFile, Some(key)) => {
                self.probe_tls_file(key, &file.path, lib)?;
                self.followed.tls_procs.entry(tgid).or_default();
                return Ok(());
            }
            // A file whose inode a uprobe lands on is unknown: probed for this process alone.
            (TlsScope::PerFile, None) | (TlsScope::PerProcess, _) => {}
        }
        // By the inode its path names (the same through /lib and /usr/lib, or an overlay), not
        // the one it maps: a file probed ahead is probed once.
        let key = stat_key(&file.path)?;
        if self.followed.tls_procs.get(&tgid).is_some_and(|p| p.files.contains(&key)) {
            return Ok(());
        }
        if !self.followed.tls_procs.contains_key(&tgid) && self.followed.tls_procs.len() >= MAX_TLS_PROCESSES
        {
            return Err(format!("already following {MAX_TLS_PROCESSES} processes' TLS libraries"));
        }
        let scope = UProbeScope::OneProcess(std::num::NonZeroU32::new(tgid).ok_or("pid 0")?);
        let links = self.attach_tls(&file.path, lib, scope)?;
        let proc = self.followed.tls_procs.entry(tgid).or_default();
        proc.links.extend(links);
        proc.files.push(key);
        Ok(())
    }

    /// Probes a TLS library file for every process (once).
    fn probe_tls_file(
        &mut self,
        key: runtime::FileKey,
        path: &Path,
        lib: &runtime::TlsLibrary,
    ) -> Result<(), String> {
        if self.followed.tls_files.contains_key(&key) {
            return Ok(());
        }
        if self.followed.tls_files.len() >= MAX_TLS_FILES {
            return Err(format!("already probing {MAX_TLS_FILES} TLS library files"));
        }
        let links = self.attach_tls(path, lib, UProbeScope::AllProcesses)?;
        self.followed.tls_files.insert(key, links);
        Ok(())
    }

    /// Puts the TLS programs on `lib`'s functions in `path`; all or none.
    fn attach_tls(
        &mut self,
        path: &Path,
        lib: &runtime::TlsLibrary,
        scope: UProbeScope,
    ) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
        let probes = lib.functions.iter().flat_map(|&(programs, offset)| programs.map(|name| (name, offset)));
        self.attach_all(path, probes, scope)
    }

    /// Puts each program on its offset in `path`; all or none (those attached before a failure
    /// are detached).
    fn attach_all(
        &mut self,
        path: &Path,
        probes: impl IntoIterator<Item = (&'static str, u64)>,
        scope: UProbeScope,
    ) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
        let mut links = Vec::new();
        for (name, offset) in probes {
            match self.attach_uprobe(name, path, offset, scope) {
                Ok(link) => links.push((name, link)),
                Err(e) => {
                    self.detach_uprobes(links);
                    return Err(e);
                }
            }
        }
        Ok(links)
    }

    /// Whether a TLS library `tgid` maps is probed for it.
    pub fn follows_tls(&self, tgid: u32) -> bool {
        self.followed.tls_procs.get(&tgid).is_some_and(|p| p.mapped)
    }

    /// `tgid` exec'd: the library it mapped is gone with its old image. Its own probes stay: they
    /// follow the process (not its image), and the new one maps the same libraries more often
    /// than not (they are on the files its root holds).
    pub fn exec_tls(&mut self, tgid: u32) {
        if let Some(p) = self.followed.tls_procs.get_mut(&tgid) {
            p.mapped = false;
        }
        let _ = self.watched.clear(tgid, WATCH_TLS);
    }

    /// Detaches `tgid`'s TLS probes (it exited, or is no longer selected).
    pub fn forget_tls(&mut self, tgid: u32) {
        if let Some(p) = self.followed.tls_procs.remove(&tgid) {
            self.detach_uprobes(p.links);
            let _ = self.watched.clear(tgid, WATCH_TLS);
        }
    }

    /// `tgid`'s executable and its (device, inode), if uprobes may follow one more binary.
    fn followable(&self, tgid: u32) -> Result<(PathBuf, (u64, u64)), String> {
        if !self.followed.on {
            return Err("uprobes off".into());
        }
        let exe = PathBuf::from(format!("/proc/{tgid}/exe"));
        let key = stat_key(&exe)?;
        let known = self.followed.go.contains_key(&key) || self.followed.nginx.contains_key(&key);
        if !known && self.followed.go.len() + self.followed.nginx.len() >= MAX_FOLLOWED_BINARIES {
            return Err(format!("already following {MAX_FOLLOWED_BINARIES} binaries"));
        }
        Ok((exe, key))
    }

    /// Puts the uprobes on a Go process's net/http functions.
    fn attach_go(
        &mut self,
        tgid: u32,
        exe: &Path,
        bin: &runtime::GoBinary,
    ) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
        let scope = UProbeScope::OneProcess(std::num::NonZeroU32::new(tgid).ok_or("pid 0")?);
        // Where roundTrip reads the connection's fd, the writer goroutine need not be followed.
        let writes = if bin.conn_fd.is_some() { None } else { Some((GO_PROGRAMS[1], bin.request_write)) };
        let mut probes: Vec<(&'static str, u64)> =
            std::iter::once((GO_PROGRAMS[0], bin.round_trip)).chain(writes).collect();
        if let Ok(tls) = &bin.tls {
            let [handshake, write, read, read_copy, h2_headers] = GO_TLS_PROGRAMS;
            probes.extend(tls.handshakes.iter().map(|&o| (handshake, o)));
            probes.extend([(write, tls.write), (read_copy, tls.read_copy)]);
            // Read's entry only where its receiver is not found on its stack at the copy.
            if tls.read_conn_at.is_none() {
                probes.push((read, tls.read));
            }
            probes.extend(tls.h2_server.map(|(o, _)| (h2_headers, o)));
        }
        self.attach_all(exe, probes, scope)
    }

    /// Starts following goroutine creation in the Go processes that made their first net/http
    /// call since the last check. Cheap when none is waiting.
    pub fn follow_goroutine_creation(&mut self) {
        if self.followed.go_pending.is_empty() {
            return;
        }
        let waiting: Vec<(u32, runtime::GoAncestry)> =
            self.followed.go_pending.iter().map(|(pid, a)| (*pid, *a)).collect();
        for (tgid, a) in waiting {
            let Some(m) = self.ebpf.map(maps::GO_PROCS) else { return };
            let Ok(procs) = HashMap::<&MapData, u32, GoProc>::try_from(m) else { return };
            let Ok(mut proc) = procs.get(&tgid, 0) else {
                self.followed.go_pending.remove(&tgid);
                continue;
            };
            if proc.calls == 0 {
                continue;
            }
            self.followed.go_pending.remove(&tgid);
            let exe = PathBuf::from(format!("/proc/{tgid}/exe"));
            let Some(scope) = std::num::NonZeroU32::new(tgid).map(UProbeScope::OneProcess) else { continue };
            match self.attach_uprobe(GO_PROGRAMS[2], &exe, a.new_goroutine, scope) {
                Ok(link) => {
                    if let Some(links) = self.followed.go_links.get_mut(&tgid) {
                        links.push((GO_PROGRAMS[2], link));
                    }
                    (proc.g_m, proc.m_curg, proc.g_sched) = (a.g_m, a.m_curg, a.g_sched);
                    if let Some(m) = self.ebpf.map_mut(maps::GO_PROCS)
                        && let Ok(mut procs) = HashMap::<&mut MapData, u32, GoProc>::try_from(m)
                    {
                        let _ = procs.insert(tgid, proc, 0);
                    }
                    info!("pid {tgid} made its first net/http call: goroutine creation followed from now on");
                }
                Err(e) => warn!("pid {tgid}: goroutines do not inherit their creator's request: {e}"),
            }
        }
    }

    fn attach_uprobe(
        &mut self,
        name: &'static str,
        exe: &Path,
        offset: u64,
        scope: UProbeScope,
    ) -> Result<UProbeLinkId, String> {
        let prog: &mut UProbe = self
            .ebpf
            .program_mut(name)
            .ok_or("uprobe program missing")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        let link = prog
            .attach(UProbeAttachLocation::AbsoluteOffset(offset), exe, scope)
            .map_err(|e| format!("uprobe {name}: {e}"))?;
        self.attached += 1;
        Ok(link)
    }

    fn detach_uprobes(&mut self, links: Vec<(&'static str, UProbeLinkId)>) {
        for (name, link) in links {
            if let Some(p) = self.ebpf.program_mut(name)
                && let Ok(p) = <&mut UProbe>::try_from(p)
                && p.detach(link).is_ok()
            {
                self.attached -= 1;
            }
        }
    }

    /// Forgets a Go program that exited (or exec'd another program): its probes and its entry.
    /// Costs nothing for a pid that was not followed (every exec and exit comes here).
    pub fn forget_go(&mut self, tgid: u32) {
        self.followed.go_pending.remove(&tgid);
        // A kernel entry exists only for a pid whose probes are attached.
        let Some(links) = self.followed.go_links.remove(&tgid) else {
            return;
        };
        self.detach_uprobes(links);
        if let Some(m) = self.ebpf.map_mut(maps::GO_PROCS)
            && let Ok(mut procs) = HashMap::<&mut MapData, u32, GoProc>::try_from(m)
        {
            let _ = procs.remove(&tgid);
        }
        let _ = self.watched.clear(tgid, WATCH_GO | WATCH_GO_TLS);
    }

    /// Whether `tgid` is selected (always true when every process is traced).
    pub fn is_watched(&self, tgid: u32) -> bool {
        matches!(self.options.selection, Selection::All) || self.watched.get(tgid) & WATCH_SELECTED != 0
    }

    /// Starts tracking a connection found in /proc.
    pub fn insert_conn(&mut self, tgid: u32, fd: u32, state: ConnState) -> Result<(), CaptureError> {
        if state.role == ROLE_CLIENT {
            // Its sends need the send hook's work (see `WATCH_CLIENTS`). A tgid beyond the array
            // has no bits to set: the kernel takes it as one that may have clients.
            let _ = self.watched.set(tgid, WATCH_CLIENTS);
        }
        self.conns.insert(fd_key(tgid, fd), state, 0).map_err(CaptureError::Map)
    }

    /// Asks the kernel to report nothing more of these connections: userspace reads no protocol
    /// on them. Returns how many requests the map took (an LRU: a full one forgets its oldest).
    pub fn mute(&mut self, conns: &[ConnId]) -> usize {
        let Some(m) = self.ebpf.map_mut(maps::MUTED) else {
            return 0;
        };
        let Ok(mut muted) = HashMap::<&mut MapData, u64, u64>::try_from(m) else {
            return 0;
        };
        conns.iter().filter(|c| muted.insert(fd_key(c.tgid, c.fd), c.generation, 0).is_ok()).count()
    }

    /// Stops tracking a connection (its process exited).
    pub fn remove_conn(&mut self, tgid: u32, fd: u32) {
        // Absent keys are fine: the kernel may have removed it on close already.
        let _ = self.conns.remove(&fd_key(tgid, fd));
    }

    /// Records or corrects a listening socket's address.
    pub fn insert_listener(&mut self, tgid: u32, fd: u32, local: SockAddr) -> Result<(), CaptureError> {
        self.listeners.insert(fd_key(tgid, fd), ListenerState { local }, 0).map_err(CaptureError::Map)
    }

    /// Forgets every listener of a process that exited.
    pub fn remove_listeners_of(&mut self, tgid: u32) {
        let keys: Vec<u64> =
            self.listeners.keys().filter_map(Result::ok).filter(|k| (k >> 32) as u32 == tgid).collect();
        for k in keys {
            let _ = self.listeners.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wakeup_step;

    #[test]
    fn wakeups_come_before_the_cpus_can_fill_the_ring() {
        // The default: 256 KiB per CPU, well inside an 8 MiB ring on a few CPUs.
        assert_eq!(wakeup_step(256 << 10, 8 << 20, 2), 256 << 10);
        // Many CPUs share the ring: a quarter of it over all of them.
        assert_eq!(wakeup_step(256 << 10, 8 << 20, 64), 32 << 10);
        // A small ring: 4 KiB over 2 CPUs wakes the reader every 512 bytes of a CPU's records.
        assert_eq!(wakeup_step(256 << 10, 4096, 2), 512);
        // Rounded down to a power of two, and 0 still means every record.
        assert_eq!(wakeup_step(100_000, 8 << 20, 2), 65536);
        assert_eq!(wakeup_step(0, 4096, 2), 0);
        assert_eq!(wakeup_step(256 << 10, 4096, 4096), 1);
        for cpus in [1, 2, 3, 8, 96, 1000] {
            for ring in [4096u64, 1 << 16, 8 << 20, 1 << 30] {
                let step = wakeup_step(256 << 10, ring, cpus);
                assert!(step.is_power_of_two(), "{step}");
                assert!(step * u64::from(cpus) <= (ring / 4).max(u64::from(cpus)), "{ring} {cpus}: {step}");
            }
        }
    }
}
