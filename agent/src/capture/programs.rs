//! The attach table: every program and the tracepoint it hooks. One place to read what tracewire
//! attaches to.

/// One tracepoint program.
#[derive(Debug, Clone, Copy)]
pub struct ProgramSpec {
    /// Function name in the kernel object.
    pub program: &'static str,
    /// Tracepoint category.
    pub category: &'static str,
    /// Tracepoint name.
    pub tracepoint: &'static str,
}

const fn sys(name: &'static str) -> ProgramSpec {
    ProgramSpec { program: name, category: "syscalls", tracepoint: name }
}

/// The data path through the socket layer (raw tracepoints: program, category, tracepoint):
/// programs run only on socket sends and receives, a few per request, and never for a process
/// that does no socket I/O. The tracepoints exist since Linux 6.16 (`tcp_sendmsg_locked`).
/// Connections are followed from TCP state changes (`inet_sock_set_state` raw: no trace record
/// is built for each change of every socket of the node) and `tcp_destroy_sock` (once per
/// socket), which ends a connection whose socket closed while its application held it, when the
/// application closes it.
pub const SOCKET_DATA_PROGRAMS: &[(&str, &str, &str)] = &[
    // Connection lifecycle first: a connection is known before data on it can arrive.
    ("sock_set_state", "sock", "inet_sock_set_state"),
    ("tcp_sendmsg_locked", "tcp", "tcp_sendmsg_locked"),
    ("sock_send_length", "sock", "sock_send_length"),
    ("sock_recv_length", "sock", "sock_recv_length"),
    ("tcp_destroy_sock", "tcp", "tcp_destroy_sock"),
];

/// The data path through every syscall, for older kernels: `raw_syscalls` sys_enter/sys_exit call
/// the program directly with the registers (a per-syscall tracepoint would build a trace record
/// first, several hundred nanoseconds per hooked syscall of every process). Every syscall of every
/// process then runs two programs.
pub const SYSCALL_DATA_PROGRAMS: &[(&str, &str, &str)] =
    &[("sys_enter", "raw_syscalls", "sys_enter"), ("sys_exit", "raw_syscalls", "sys_exit")];

/// Tracepoint programs attached with either data path, in attach order. Lifecycle hooks first,
/// so that a connection is known before data on it can arrive (the data hooks are attached after
/// these). None of them is a syscall tracepoint.
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec { program: "sched_process_fork", category: "sched", tracepoint: "sched_process_fork" },
    ProgramSpec { program: "sched_process_exec", category: "sched", tracepoint: "sched_process_exec" },
    ProgramSpec { program: "sched_process_exit", category: "sched", tracepoint: "sched_process_exit" },
];

/// Connection lifecycle through syscall tracepoints, for the syscall data path only (which runs
/// a program on every syscall anyway), with TCP state changes from the `inet_sock_set_state`
/// record. The socket data path follows connections from the socket hooks instead (see
/// [`SOCKET_DATA_PROGRAMS`]): a single syscall tracepoint puts every
/// syscall of every task on the kernel's slow path. `tcp_rcv_space_adjust` completes the
/// addresses the syscalls do not show (the socket path reads them from the socket).
pub const SYSCALL_LIFECYCLE_PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec { program: "inet_sock_set_state", category: "sock", tracepoint: "inet_sock_set_state" },
    ProgramSpec { program: "tcp_rcv_space_adjust", category: "tcp", tracepoint: "tcp_rcv_space_adjust" },
    sys("sys_enter_bind"),
    sys("sys_enter_listen"),
    sys("sys_exit_listen"),
    sys("sys_enter_accept"),
    sys("sys_exit_accept"),
    sys("sys_enter_accept4"),
    sys("sys_exit_accept4"),
    sys("sys_enter_connect"),
    sys("sys_exit_connect"),
    sys("sys_enter_close"),
];

/// Fields the programs read at fixed offsets: (tracepoint, field, offset, size). Checked against
/// tracefs before loading, so a kernel whose layout differs gets a clear error instead of wrong
/// data.
pub const FIXED_FIELDS: &[(&str, &str, &str, usize, usize)] = &[
    ("sock", "inet_sock_set_state", "oldstate", 16, 4),
    ("sock", "inet_sock_set_state", "newstate", 20, 4),
    ("sock", "inet_sock_set_state", "sport", 24, 2),
    ("sock", "inet_sock_set_state", "family", 28, 2),
    ("sock", "inet_sock_set_state", "protocol", 30, 2),
    ("sock", "inet_sock_set_state", "saddr", 32, 4),
    ("sock", "inet_sock_set_state", "saddr_v6", 40, 16),
    ("tcp", "tcp_rcv_space_adjust", "sport", 16, 2),
    ("tcp", "tcp_rcv_space_adjust", "dport", 18, 2),
    ("tcp", "tcp_rcv_space_adjust", "family", 20, 2),
    ("tcp", "tcp_rcv_space_adjust", "saddr", 22, 4),
    ("tcp", "tcp_rcv_space_adjust", "daddr", 26, 4),
    ("tcp", "tcp_rcv_space_adjust", "saddr_v6", 30, 16),
    ("tcp", "tcp_rcv_space_adjust", "daddr_v6", 46, 16),
    ("syscalls", "sys_exit_accept4", "ret", 16, 8),
    ("syscalls", "sys_enter_accept4", "fd", 16, 8),
    ("syscalls", "sys_enter_accept4", "upeer_sockaddr", 24, 8),
    ("syscalls", "sys_enter_connect", "uservaddr", 24, 8),
    ("syscalls", "sys_enter_close", "fd", 16, 8),
];
