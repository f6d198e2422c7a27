//! What the traced program's runtime implies for linking calls to requests.
//!
//! Go schedules goroutines on any OS thread: the thread that read a request may next run a
//! goroutine that calls out for another request, so the kernel must not take a thread's current
//! request as a call's parent there. Go programs are recognised by their `.go.buildinfo` section
//! (present in every Go binary since 1.13, stripped or not). Other runtimes that hand requests
//! between threads are caught in the kernel, when a response is written by another thread than
//! the one that read its request.
//!
//! Instead, the kernel follows a Go program's net/http calls from the goroutine that serves a
//! request to the one that writes the call (uprobes, see the kernel's `golang` probes). For
//! that it needs, per binary: the register ABI (Go 1.18+, whose build info says its version),
//! the file offsets of two net/http functions (from the symbol table), and where `runtime.g`
//! keeps the goroutine id (from the DWARF the Go linker writes by default).
use std::{
    borrow::Cow,
    fs::File,
    io::Read as _,
    path::{Path, PathBuf},
};

use object::{CompressionFormat, Object as _, ObjectSection as _, ObjectSymbol as _, ReadCache, ReadRef};

/// Whether the executable at `path` is a Go program. Unreadable or non-ELF files are not.
pub fn is_go(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    // Reads the headers and section table only, not the whole (often large) binary.
    let cache = ReadCache::new(file);
    match object::File::parse(&cache) {
        Ok(obj) => obj.section_by_name(".go.buildinfo").is_some(),
        Err(_) => false,
    }
}

/// The net/http function whose entry ties an outgoing request to the calling goroutine:
/// `(*persistConn).roundTrip(pc, req *transportRequest)`.
pub const GO_ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";
/// The function the transport's writer goroutine writes a request with: `(*Request).write`.
pub const GO_REQUEST_WRITE: &str = "net/http.(*Request).write";
/// The function `newproc1` sets up a new goroutine's registers with (see the kernel's
/// `go_new_goroutine`).
pub const GO_NEW_GOROUTINE: &str = "runtime.gostartcallfn";

/// What the kernel needs to follow one Go binary's net/http calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoBinary {
    /// Go version the binary was built with (`go1.19.8`).
    pub version: String,
    /// Offset of `goid` in `runtime.g`.
    pub goid_offset: u32,
    /// File offset of [`GO_ROUND_TRIP`].
    pub round_trip: u64,
    /// File offset of [`GO_REQUEST_WRITE`].
    pub request_write: u64,
    /// What goroutines inheriting their creator's request needs, when the binary has it (its
    /// DWARF and [`GO_NEW_GOROUTINE`]).
    pub ancestry: Option<GoAncestry>,
    /// How `roundTrip` finds the fd of the connection a call goes out on, when the binary has
    /// it (DWARF, a fixed load address): then [`GO_REQUEST_WRITE`] is not probed.
    pub conn_fd: Option<GoConnFd>,
    /// Where its `crypto/tls` connections' plaintext is read, or why it is not.
    pub tls: Result<GoTls, String>,
}

/// The `crypto/tls` functions whose plaintext the kernel reads (see the kernel's `gotls`).
pub const GO_TLS_WRITE: &str = "crypto/tls.(*Conn).Write";
pub const GO_TLS_READ: &str = "crypto/tls.(*Conn).Read";
pub const GO_TLS_HANDSHAKES: [&str; 2] =
    ["crypto/tls.(*Conn).clientHandshake", "crypto/tls.(*Conn).serverHandshake"];
/// net/http's HTTP/2 server starts a stream's handler here (see the kernel's `go_h2_headers`).
pub const GO_H2_PROCESS_HEADERS: &str = "net/http.(*http2serverConn).processHeaders";
/// The function `(*Conn).Read` copies the plaintext out with.
const GO_MEMMOVE: &str = "runtime.memmove";
/// The itab of `*crypto/tls.Conn` as a `net.Conn` (prefix as for [`TCP_CONN_ITABS`]).
const TLS_CONN_ITABS: [&str; 2] = ["go.itab.*crypto/tls.Conn,net.Conn", "go:itab.*crypto/tls.Conn,net.Conn"];

/// Where a Go binary's `crypto/tls` plaintext is read: probe offsets in the file, every one on
/// an instruction the kernel emulates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTls {
    /// [`GO_TLS_WRITE`]'s stack-check branch.
    pub write: u64,
    /// [`GO_TLS_READ`]'s stack-check branch.
    pub read: u64,
    /// Where [`GO_TLS_READ`] spills its receiver, relative to the stack pointer in its body
    /// (see [`receiver_spill`]): then its entry needs no probe.
    pub read_conn_at: Option<u32>,
    /// The call of `runtime.memmove` in [`GO_TLS_READ`] that copies the plaintext out.
    pub read_copy: u64,
    /// The stack-check branches of the [`GO_TLS_HANDSHAKES`] the binary has.
    pub handshakes: Vec<u64>,
    /// Offset of `conn` in `crypto/tls.Conn`.
    pub tls_conn: u32,
    /// Address of the `*crypto/tls.Conn` → `net.Conn` itab (0: not in the binary, and calls over
    /// TLS stay unlinked).
    pub tls_itab: u64,
    /// net/http's HTTP/2 server (over TLS): [`GO_H2_PROCESS_HEADERS`]'s stack-check branch and
    /// the offset of `conn` in `http2serverConn`, when the binary has both.
    pub h2_server: Option<(u64, u32)>,
}

/// The way from a `*persistConn` to its socket's fd (see the kernel's `conn_fd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoConnFd {
    /// Offset of `conn` in `net/http.persistConn`.
    pub pc_conn: u32,
    /// Offset of the `*netFD` in `net.TCPConn`.
    pub tcp_fd: u32,
    /// Offset of `pfd.Sysfd` in `net.netFD`.
    pub netfd_sysfd: u32,
    /// Address of the `*net.TCPConn` → `net.Conn` itab.
    pub tcp_itab: u64,
}

/// The itab of `*net.TCPConn` as a `net.Conn` (the linker's prefix changed from `go.` to
/// `go:` in Go 1.20).
const TCP_CONN_ITABS: [&str; 2] = ["go.itab.*net.TCPConn,net.Conn", "go:itab.*net.TCPConn,net.Conn"];

/// Where a new goroutine's creator is found (see the kernel's `go_new_goroutine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoAncestry {
    /// File offset of [`GO_NEW_GOROUTINE`].
    pub new_goroutine: u64,
    /// Offset of `m` in `runtime.g`.
    pub g_m: u32,
    /// Offset of `curg` in `runtime.m`.
    pub m_curg: u32,
    /// Offset of `sched` in `runtime.g`.
    pub g_sched: u32,
}

/// The nginx functions the kernel follows an upstream request with (see the kernel's `nginx`
/// probes); nginx exports its symbols for dynamic modules.
pub const NGX_UPSTREAM_INIT: &str = "ngx_http_upstream_init";
pub const NGX_CONNECT_PEER: &str = "ngx_event_connect_peer";

/// File offsets of the nginx functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NginxBinary {
    /// [`NGX_UPSTREAM_INIT`].
    pub upstream_init: u64,
    /// [`NGX_CONNECT_PEER`].
    pub connect_peer: u64,
}

/// Whether an executable is worth inspecting as nginx (or OpenResty, which is nginx).
pub fn looks_like_nginx(exe: &Path) -> bool {
    exe.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("nginx") || n.starts_with("openresty"))
}

/// Inspects an nginx executable: the file offsets of its upstream functions, or why not.
pub fn inspect_nginx(path: &Path) -> Result<NginxBinary, String> {
    let file = File::open(path).map_err(|e| format!("open: {e}"))?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| format!("not an ELF file: {e}"))?;
    let (mut upstream_init, mut connect_peer) = (None, None);
    for sym in obj.dynamic_symbols().chain(obj.symbols()) {
        let slot = match sym.name() {
            Ok(NGX_UPSTREAM_INIT) => &mut upstream_init,
            Ok(NGX_CONNECT_PEER) => &mut connect_peer,
            _ => continue,
        };
        if slot.is_none() {
            *slot = file_offset(&obj, &sym);
        }
    }
    match (upstream_init, connect_peer) {
        (Some(upstream_init), Some(connect_peer)) => Ok(NginxBinary { upstream_init, connect_peer }),
        _ => Err(format!("{NGX_UPSTREAM_INIT} or {NGX_CONNECT_PEER} not among its symbols")),
    }
}

/// The OpenSSL API functions a TLS library's plaintext is read at (see the kernel's `tls`
/// probes), with the uprobe programs their entry and return take. The `_ex` forms (OpenSSL
/// 1.1.1+) are optional; the rest must all be there.
pub const TLS_FUNCTIONS: [(&str, [&str; 2], bool); 5] = [
    ("SSL_read", ["ssl_read", "ssl_read_ret"], true),
    ("SSL_write", ["ssl_write", "ssl_write_ret"], true),
    ("SSL_do_handshake", ["ssl_handshake", "ssl_handshake_ret"], true),
    ("SSL_read_ex", ["ssl_read_ex", "ssl_read_ret"], false),
    ("SSL_write_ex", ["ssl_write_ex", "ssl_write_ret"], false),
];

/// A TLS library's probed functions: (uprobe programs, file offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsLibrary {
    /// The functions found, with the programs their entry and return take.
    pub functions: Vec<([&'static str; 2], u64)>,
}

/// A file that may hold OpenSSL's API, as a process sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCandidate {
    /// The file through `/proc/<pid>/root` (a container's own file), to open and probe.
    pub path: PathBuf,
    /// Its path inside the process's root (`/usr/lib/x86_64-linux-gnu/libssl.so.3`).
    pub in_root: PathBuf,
    /// (device, inode) of the file a uprobe on it goes to: as `/proc/<pid>/maps` shows a mapped
    /// file, which is the file underneath an overlay (a container's image layer, shared by the
    /// containers of one image). `None` when not known: a file of an overlay not mapped.
    pub key: Option<FileKey>,
}

/// A file's (device, inode), comparable with `stat`'s `st_dev` / `st_ino`.
pub type FileKey = (u64, u64);

/// The files a process maps that may hold OpenSSL's API: its executable (a static build, such as
/// Node's) and any `libssl` shared library, as paths through `/proc/<pid>/root` (so that a
/// container's own files are the ones inspected). The executable comes first.
pub fn tls_candidates(pid: u32) -> Vec<TlsCandidate> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let mut out = vec![TlsCandidate {
        path: PathBuf::from(format!("/proc/{pid}/exe")),
        in_root: exe.clone(),
        key: None,
    }];
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return out;
    };
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut fields = line.split_ascii_whitespace();
        let (Some(perms), Some(dev), Some(inode), Some(path)) =
            (fields.nth(1), fields.nth(1), fields.next(), fields.next())
        else {
            continue;
        };
        let key = maps_key(dev, inode);
        if Path::new(path) == exe {
            if out[0].key.is_none() {
                out[0].key = key;
            }
            continue;
        }
        if is_libssl(Path::new(path))
            && perms.contains('x')
            && !out.iter().any(|c| c.in_root == Path::new(path))
        {
            out.push(TlsCandidate {
                path: PathBuf::from(format!("/proc/{pid}/root{path}")),
                in_root: PathBuf::from(path),
                key,
            });
        }
    }
    out
}

/// Whether a file's name is a `libssl` shared library's.
fn is_libssl(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("libssl.so") || n.starts_with("libssl-"))
}

/// A `/proc/<pid>/maps` line's device (`fd:01`, hex major:minor) and inode as a [`FileKey`].
fn maps_key(dev: &str, inode: &str) -> Option<FileKey> {
    let (major, minor) = dev.split_once(':')?;
    let (major, minor) = (u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
    let inode: u64 = inode.parse().ok()?;
    (inode != 0).then(|| (libc::makedev(major, minor), inode))
}

/// The host's `libssl` shared libraries (as the node's first process sees its root), one path
/// per file: in the directories the dynamic loader searches by default and their multiarch
/// subdirectories. They are probed before any process maps them, so that a process that
/// starts and makes its TLS connection at once (`curl https://...` in a job) is read from its
/// first call. Symbolic links to a file already found are left out.
pub fn system_tls_libraries(root: &Path) -> Vec<TlsCandidate> {
    use std::os::unix::fs::MetadataExt as _;
    // /usr first: where /lib links to /usr/lib, a file's name is the one processes map it by.
    const DIRS: [&str; 5] = ["/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib"];
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in DIRS {
        dirs.push(PathBuf::from(dir));
        let Ok(entries) = std::fs::read_dir(root.join(&dir[1..])) else { continue };
        // Debian's multiarch directories (x86_64-linux-gnu, aarch64-linux-gnu).
        dirs.extend(entries.flatten().filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name.contains("-linux-") && e.file_type().ok()?.is_dir()).then(|| PathBuf::from(dir).join(name))
        }));
    }
    let mut seen: Vec<FileKey> = Vec::new();
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(root.join(dir.strip_prefix("/").unwrap_or(&dir))) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| is_libssl(p)).collect();
        // Real files before the links to them (libssl.so.3 before libssl.so).
        names.sort_by_key(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()));
        for path in names {
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            let key = (meta.dev(), meta.ino());
            if !meta.is_file() || seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let Some(name) = path.file_name() else { continue };
            // On an overlay, `stat` names the overlay's inode, not the one a uprobe lands on.
            let key = (!on_overlay(&path)).then_some(key);
            out.push(TlsCandidate { in_root: dir.join(name), path, key });
        }
    }
    out
}

/// Whether `path` is on an overlay file system (a container's root).
fn on_overlay(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    const OVERLAYFS_SUPER_MAGIC: libc::c_long = 0x794c_7630;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return true };
    // SAFETY: `c` is a NUL-terminated path and `buf` a statfs the call fills.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // An unknown file system is taken as an overlay: its files are then probed per process only.
    unsafe { libc::statfs(c.as_ptr(), &mut buf) != 0 || buf.f_type as libc::c_long == OVERLAYFS_SUPER_MAGIC }
}

/// Inspects a file for OpenSSL's API: the file offsets of the functions to probe, or why not.
///
/// Where `SSL_read_ex` / `SSL_write_ex` are the usual thin wrappers (OpenSSL 1.1.1 and 3.x:
/// `sub rsp, n; call ssl_{read,write}_internal`), the internal functions they call are probed
/// instead of the four exported ones: `SSL_read` and `SSL_read_ex` both go through the internal
/// one, whose arguments are `SSL_read_ex`'s, and it starts with pushes, which the kernel emulates.
/// The exported functions start with `sub rsp, n`, which a uprobe has to single-step: a second
/// trap per call, and in a VM a debug exception costs tens of microseconds (measured: nginx over
/// HTTPS went from 83k to 10k requests/s).
pub fn inspect_tls(path: &Path) -> Result<TlsLibrary, String> {
    let file = File::open(path).map_err(|e| format!("open: {e}"))?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| format!("not an ELF file: {e}"))?;
    let mut found: [Option<u64>; TLS_FUNCTIONS.len()] = [None; TLS_FUNCTIONS.len()];
    let mut internal: [Option<u64>; 2] = [None; 2];
    for sym in obj.dynamic_symbols().chain(obj.symbols()) {
        if sym.kind() != object::SymbolKind::Text || sym.is_undefined() {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        // Versioned names (`SSL_read@@OPENSSL_3.0.0`) in some symbol tables.
        let name = name.split('@').next().unwrap_or(name);
        if let Some(i) = TLS_FUNCTIONS.iter().position(|(f, _, _)| *f == name)
            && found[i].is_none()
        {
            found[i] = file_offset(&obj, &sym);
            let slot = match name {
                "SSL_read_ex" => Some(0),
                "SSL_write_ex" => Some(1),
                _ => None,
            };
            if let Some(k) = slot {
                internal[k] = wrapped_call(&obj, &sym);
            }
        }
    }
    let mut functions = Vec::new();
    let exported: &[usize] = if let [Some(read), Some(write)] = internal {
        // The internal functions take the `_ex` arguments.
        functions.push((["ssl_read_ex", "ssl_read_ret"], read));
        functions.push((["ssl_write_ex", "ssl_write_ret"], write));
        &[2]
    } else {
        &[0, 1, 2, 3, 4]
    };
    for &i in exported {
        let (name, program, required) = TLS_FUNCTIONS[i];
        match found[i] {
            Some(o) => functions.push((program, o)),
            None if required => return Err(format!("{name} not among its symbols")),
            None => {}
        }
    }
    Ok(TlsLibrary { functions })
}

/// The file offset of the function a thin wrapper calls first: `[endbr64] sub rsp, imm8; call
/// rel32` at the wrapper's start (x86-64 only).
fn wrapped_call<'d, R: ReadRef<'d>>(
    obj: &object::File<'d, R>,
    sym: &object::Symbol<'d, '_, R>,
) -> Option<u64> {
    if obj.architecture() != object::Architecture::X86_64 {
        return None;
    }
    let sec = obj.section_by_index(sym.section_index()?).ok()?;
    let code = sec.data_range(sym.address(), 13).ok().flatten()?;
    let code = code.strip_prefix(&[0xf3, 0x0f, 0x1e, 0xfa][..]).unwrap_or(code);
    let [0x48, 0x83, 0xec, _, 0xe8, r0, r1, r2, r3, ..] = *code else {
        return None;
    };
    let skipped = 13 - code.len() as u64;
    let after = sym.address() + skipped + 9;
    let target = after.checked_add_signed(i64::from(i32::from_le_bytes([r0, r1, r2, r3])))?;
    let (file_off, _) = sec.file_range()?;
    let end = sec.address() + sec.size();
    (target >= sec.address() && target < end).then(|| target - sec.address() + file_off)
}

/// Where a function symbol's code is in the file (uprobes are placed by file offset).
fn file_offset<'d, R: ReadRef<'d>>(
    obj: &object::File<'d, R>,
    sym: &object::Symbol<'d, '_, R>,
) -> Option<u64> {
    let sec = obj.section_by_index(sym.section_index()?).ok()?;
    let (file_off, _) = sec.file_range()?;
    Some(sym.address().checked_sub(sec.address())? + file_off)
}

/// Where to put a uprobe in a Go function so that the kernel emulates the probed instruction
/// instead of single-stepping it (a second trap, which costs as much as the first): the
/// conditional branch of the stack check every Go function starts with (`[lea r12, [rsp-n]]`,
/// `cmp rsp|r12, [r14+16]`, `jbe morestack`). Only the flags and r12 change before it, so the
/// arguments and `g` the probes read are the same there. 0 (the entry) when the prologue is not
/// recognised or not on x86_64.
fn stack_check_branch<'d, R: ReadRef<'d>>(obj: &object::File<'d, R>, sym: &object::Symbol<'d, '_, R>) -> u64 {
    if obj.architecture() != object::Architecture::X86_64 {
        return 0;
    }
    let Some(code) = sym
        .section_index()
        .and_then(|i| obj.section_by_index(i).ok())
        .and_then(|sec| sec.data_range(sym.address(), 16).ok().flatten())
    else {
        return 0;
    };
    // lea r12, [rsp + disp32] (8 bytes) or [rsp + disp8] (5 bytes), then cmp r12, [r14+16].
    let after_lea = match code {
        [0x4c, 0x8d, 0xa4, 0x24, _, _, _, _, 0x4d, 0x3b, 0x66, 0x10, ..] => 12,
        [0x4c, 0x8d, 0x64, 0x24, _, 0x4d, 0x3b, 0x66, 0x10, ..] => 9,
        // cmp rsp, [r14+16]
        [0x49, 0x3b, 0x66, 0x10, ..] => 4,
        _ => return 0,
    };
    match code.get(after_lea..after_lea + 2) {
        // jbe rel8, jbe rel32
        Some([0x76, _]) | Some([0x0f, 0x86]) => after_lea as u64,
        _ => 0,
    }
}

/// Where a Go method keeps its receiver for the whole call, relative to the stack pointer in its
/// body (x86-64): the register ABI gives every argument a spill slot in the caller's frame, just
/// above the return address, and a method that needs its receiver after a call stores it there
/// in its prologue (`mov [rsp+frame+8], rax` right after `sub rsp, frame`), and Go moves no stack
/// pointer within a body. `None` unless the prologue is exactly that: stack check, frame, spill
/// among its first stores.
fn receiver_spill<'d, R: ReadRef<'d>>(
    obj: &object::File<'d, R>,
    sym: &object::Symbol<'d, '_, R>,
) -> Option<u32> {
    let branch = stack_check_branch(obj, sym);
    if branch == 0 {
        return None;
    }
    let sec = obj.section_by_index(sym.section_index()?).ok()?;
    let code = sec.data_range(sym.address(), 112).ok().flatten()?;
    // The branch (jbe rel8 or rel32), then the frame.
    let at = branch as usize + if code.get(branch as usize) == Some(&0x76) { 2 } else { 6 };
    let (frame, body) = match code.get(at..)? {
        [0x48, 0x83, 0xec, n, rest @ ..] => (u32::from(*n), rest),
        [0x48, 0x81, 0xec, a, b, c, d, rest @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]), rest),
        _ => return None,
    };
    let slot = frame.checked_add(8)?;
    let store: Vec<u8> = match u8::try_from(slot) {
        Ok(d) if d < 0x80 => vec![0x48, 0x89, 0x44, 0x24, d],
        _ => [&[0x48, 0x89, 0x84, 0x24][..], &slot.to_le_bytes()].concat(),
    };
    // Before the body's first call: the prologue's stores.
    let prologue = &body[..body.iter().position(|&b| b == 0xe8).unwrap_or(body.len())];
    prologue.windows(store.len()).any(|w| w == store.as_slice()).then_some(slot)
}

/// The file offset of a Go function's stack-check branch (see [`stack_check_branch`]), when its
/// prologue is the one expected: a probe there costs no single step.
fn emulated_entry<'d, R: ReadRef<'d>>(
    obj: &object::File<'d, R>,
    sym: &object::Symbol<'d, '_, R>,
) -> Option<u64> {
    match stack_check_branch(obj, sym) {
        0 => None,
        branch => Some(file_offset(obj, sym)? + branch),
    }
}

/// Inspects a Go executable: `Ok` when its calls can be followed, `Err` saying why not.
pub fn inspect_go(path: &Path) -> Result<GoBinary, String> {
    let file = File::open(path).map_err(|e| format!("open: {e}"))?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| format!("not an ELF file: {e}"))?;
    let host = if cfg!(target_arch = "x86_64") {
        object::Architecture::X86_64
    } else if cfg!(target_arch = "aarch64") {
        object::Architecture::Aarch64
    } else {
        return Err("goroutines are followed on x86_64 and arm64 only".into());
    };
    if obj.architecture() != host {
        return Err(format!("built for {:?}", obj.architecture()));
    }
    let info = obj.section_by_name(".go.buildinfo").ok_or("not a Go program")?;
    let version = build_version(info.data().map_err(|e| e.to_string())?)
        .ok_or("built before Go 1.18 (register ABI and build info format unknown)")?;
    let (mut round_trip, mut request_write, mut new_goroutine, mut tcp_itab) = (None, None, None, None);
    let (mut tls_write, mut tls_read, mut read_copy, mut memmove, mut tls_itab) = (None, None, None, None, 0);
    let mut handshakes = Vec::new();
    let mut h2_headers = None;
    let mut read_conn_at = None;
    for sym in obj.symbols() {
        let slot = match sym.name() {
            Ok(GO_ROUND_TRIP) => &mut round_trip,
            Ok(GO_REQUEST_WRITE) => &mut request_write,
            Ok(GO_NEW_GOROUTINE) => &mut new_goroutine,
            Ok(GO_TLS_WRITE) => {
                tls_write = emulated_entry(&obj, &sym);
                continue;
            }
            Ok(GO_TLS_READ) => {
                tls_read = emulated_entry(&obj, &sym);
                read_conn_at = receiver_spill(&obj, &sym);
                read_copy = Some((sym.address(), sym.size(), sym.section_index()));
                continue;
            }
            Ok(GO_H2_PROCESS_HEADERS) => {
                h2_headers = emulated_entry(&obj, &sym);
                continue;
            }
            Ok(GO_MEMMOVE) => {
                memmove = Some(sym.address());
                continue;
            }
            Ok(name) if GO_TLS_HANDSHAKES.contains(&name) => {
                handshakes.extend(emulated_entry(&obj, &sym));
                continue;
            }
            Ok(name) if TCP_CONN_ITABS.contains(&name) => {
                tcp_itab = Some(sym.address());
                continue;
            }
            Ok(name) if TLS_CONN_ITABS.contains(&name) => {
                tls_itab = sym.address();
                continue;
            }
            _ => continue,
        };
        *slot = file_offset(&obj, &sym).map(|off| off + stack_check_branch(&obj, &sym));
    }
    if obj.symbols().next().is_none() {
        return Err("stripped (no symbol table)".into());
    }
    let (Some(round_trip), Some(request_write)) = (round_trip, request_write) else {
        return Err("no net/http client in the binary".into());
    };
    let wanted = [
        ("runtime.g", "goid"),
        ("runtime.g", "m"),
        ("runtime.g", "sched"),
        ("runtime.m", "curg"),
        ("net/http.persistConn", "conn"),
        ("net.TCPConn", "conn"),
        ("net.conn", "fd"),
        ("net.netFD", "pfd"),
        ("internal/poll.FD", "Sysfd"),
        ("crypto/tls.Conn", "conn"),
        ("net/http.http2serverConn", "conn"),
    ];
    let found = dwarf_members(&obj, &wanted);
    let goid_offset = match found[0] {
        Some(off) => off,
        None => {
            known_goid_offset(&version).ok_or("no DWARF, and no known runtime.g layout for this version")?
        }
    };
    let ancestry = match (new_goroutine, found[1], found[2], found[3]) {
        (Some(new_goroutine), Some(g_m), Some(g_sched), Some(m_curg)) if g_m != 0 => {
            Some(GoAncestry { new_goroutine, g_m, m_curg, g_sched })
        }
        _ => None,
    };
    // An itab's address is the one in the symbol table only where the binary is loaded where
    // it was linked (not position-independent).
    let fixed = obj.kind() == object::ObjectKind::Executable;
    let conn_fd = match (tcp_itab, found[4], found[5], found[6], found[7], found[8]) {
        (Some(tcp_itab), Some(pc_conn), Some(tcp_conn), Some(conn_fd), Some(pfd), Some(sysfd))
            if fixed && tcp_itab != 0 =>
        {
            Some(GoConnFd { pc_conn, tcp_fd: tcp_conn + conn_fd, netfd_sysfd: pfd + sysfd, tcp_itab })
        }
        _ => None,
    };
    let tls = match (conn_fd, tls_write, tls_read, read_copy, memmove, found[9]) {
        (None, ..) => {
            Err("the fd under a connection is not known (no DWARF, or position-independent)".into())
        }
        (_, _, _, None, ..) => Err("no crypto/tls in the binary".into()),
        (_, None, ..) | (_, _, None, ..) => Err("crypto/tls's prologues not recognised".into()),
        (_, _, _, _, None, _) | (_, _, _, _, _, None) => {
            Err("runtime.memmove or tls.Conn's layout not found".into())
        }
        (Some(_), Some(write), Some(read), Some(read_sym), Some(memmove), Some(tls_conn)) => {
            match calls_to(&obj, read_sym, memmove)[..] {
                [read_copy] => {
                    // A conn at offset 0 is told apart from none by the kernel: never at 0 here.
                    let h2_server = h2_headers.zip(found[10]).filter(|(_, off)| *off != 0);
                    Ok(GoTls {
                        write,
                        read,
                        read_conn_at,
                        read_copy,
                        handshakes,
                        tls_conn,
                        tls_itab,
                        h2_server,
                    })
                }
                ref calls => Err(format!("{GO_TLS_READ} calls {GO_MEMMOVE} {} times, not once", calls.len())),
            }
        }
    };
    Ok(GoBinary { version, goid_offset, round_trip, request_write, ancestry, conn_fd, tls })
}

/// File offsets of the `call rel32` instructions in function `sym` whose target is `target`
/// (x86-64). Bytes are not decoded one instruction at a time: an `e8` inside another
/// instruction whose next four bytes happen to reach exactly `target` is not expected, and a
/// count other than the one wanted makes the caller give up.
fn calls_to<'d, R: ReadRef<'d>>(obj: &object::File<'d, R>, function: FunctionAt, target: u64) -> Vec<u64> {
    let (address, size, section) = function;
    let mut out = Vec::new();
    if obj.architecture() != object::Architecture::X86_64 {
        return out;
    }
    let Some(sec) = section.and_then(|i| obj.section_by_index(i).ok()) else {
        return out;
    };
    let (Some(code), Some((file_off, _))) = (sec.data_range(address, size).ok().flatten(), sec.file_range())
    else {
        return out;
    };
    for (i, w) in code.windows(5).enumerate() {
        if w[0] != 0xe8 {
            continue;
        }
        let next = address + i as u64 + 5;
        let rel = i64::from(i32::from_le_bytes([w[1], w[2], w[3], w[4]]));
        if next.checked_add_signed(rel) == Some(target) {
            out.push(address + i as u64 - sec.address() + file_off);
        }
    }
    out
}

/// A function symbol's address, size and section.
type FunctionAt = (u64, u64, Option<object::SectionIndex>);

/// The Go version in a `.go.buildinfo` section of the Go 1.18+ format (flag bit 2: strings
/// inline, each a uvarint length and its bytes, after a 32-byte header).
fn build_version(data: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !data.starts_with(MAGIC) || data.len() < 32 || data[15] & 2 == 0 {
        return None;
    }
    let rest = &data[32..];
    let (mut len, mut shift, mut at) = (0usize, 0u32, 0usize);
    loop {
        let b = *rest.get(at)?;
        len |= usize::from(b & 0x7f).checked_shl(shift)?;
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let v = std::str::from_utf8(rest.get(at..at.checked_add(len)?)?).ok()?;
    v.starts_with("go").then(|| v.to_string())
}

/// Offsets of `runtime.g.goid` for binaries without DWARF, by the versions known to share it.
fn known_goid_offset(version: &str) -> Option<u32> {
    let minor: u32 = version.strip_prefix("go1.")?.split(['.', '-', ' ']).next()?.parse().ok()?;
    (18..=22).contains(&minor).then_some(152)
}

/// A DWARF section's bytes, decompressed when the linker compressed it (Go does by default).
fn dwarf_section<'d, R: ReadRef<'d>>(obj: &object::File<'d, R>, name: &str) -> Option<Cow<'d, [u8]>> {
    let Some(sec) = obj.section_by_name(name) else {
        return Some(Cow::Borrowed(&[]));
    };
    let c = sec.compressed_data().ok()?;
    let size = usize::try_from(c.uncompressed_size).ok()?;
    // A corrupt header must not make the agent allocate gigabytes.
    if size > 256 << 20 {
        return None;
    }
    match c.format {
        CompressionFormat::None => Some(Cow::Borrowed(c.data)),
        CompressionFormat::Zlib => {
            let mut out = Vec::with_capacity(size);
            flate2::read::ZlibDecoder::new(c.data).take(size as u64).read_to_end(&mut out).ok()?;
            Some(Cow::Owned(out))
        }
        CompressionFormat::Zstandard => {
            let mut out = Vec::with_capacity(size);
            zstd::stream::read::Decoder::new(c.data).ok()?.take(size as u64).read_to_end(&mut out).ok()?;
            Some(Cow::Owned(out))
        }
        _ => None,
    }
}

/// `DW_AT_data_member_location` of each (structure, member) wanted, from the DWARF.
fn dwarf_members<'d, R: ReadRef<'d>, const N: usize>(
    obj: &object::File<'d, R>,
    wanted: &[(&str, &str); N],
) -> [Option<u32>; N] {
    let mut out = [None; N];
    let (Some(info), Some(abbrev), Some(strs)) = (
        dwarf_section(obj, ".debug_info"),
        dwarf_section(obj, ".debug_abbrev"),
        dwarf_section(obj, ".debug_str"),
    ) else {
        return out;
    };
    use gimli::{EndianSlice, LittleEndian};
    let info = gimli::DebugInfo::new(&info, LittleEndian);
    let abbrev = gimli::DebugAbbrev::new(&abbrev, LittleEndian);
    let strs = gimli::DebugStr::new(&strs, LittleEndian);
    let name_of = |e: &gimli::DebuggingInformationEntry<EndianSlice<'_, LittleEndian>>| -> Option<Vec<u8>> {
        match e.attr_value(gimli::DW_AT_name).ok()?? {
            gimli::AttributeValue::String(s) => Some(s.slice().to_vec()),
            gimli::AttributeValue::DebugStrRef(o) => Some(strs.get_str(o).ok()?.slice().to_vec()),
            _ => None,
        }
    };
    let location = |e: &gimli::DebuggingInformationEntry<EndianSlice<'_, LittleEndian>>| -> Option<u32> {
        match e.attr_value(gimli::DW_AT_data_member_location).ok()?? {
            gimli::AttributeValue::Udata(v) => u32::try_from(v).ok(),
            gimli::AttributeValue::Data1(v) => Some(v.into()),
            gimli::AttributeValue::Data2(v) => Some(v.into()),
            gimli::AttributeValue::Data4(v) => Some(v),
            gimli::AttributeValue::Sdata(v) => u32::try_from(v).ok(),
            _ => None,
        }
    };
    let mut structs_left: Vec<&str> = wanted.iter().map(|w| w.0).collect();
    structs_left.dedup();
    let mut units = info.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(abbrevs) = header.abbreviations(&abbrev) else { continue };
        let Ok(mut tree) = header.entries_tree(&abbrevs, None) else { continue };
        let Ok(root) = tree.root() else { continue };
        let mut children = root.children();
        while let Ok(Some(node)) = children.next() {
            let e = node.entry();
            if e.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            let Some(name) = name_of(e) else { continue };
            let Some(at) = structs_left.iter().position(|s| s.as_bytes() == name.as_slice()) else {
                continue;
            };
            let strukt = structs_left.remove(at);
            let mut members = node.children();
            while let Ok(Some(m)) = members.next() {
                let e = m.entry();
                if e.tag() != gimli::DW_TAG_member {
                    continue;
                }
                let Some(member) = name_of(e) else { continue };
                for (i, (s, f)) in wanted.iter().enumerate() {
                    if *s == strukt && f.as_bytes() == member.as_slice() {
                        out[i] = location(e);
                    }
                }
            }
            if structs_left.is_empty() {
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine's OpenSSL: its read and write are probed at the internal functions
    /// `SSL_read_ex` / `SSL_write_ex` call, which start with instructions the kernel emulates.
    #[test]
    fn openssl_is_probed_where_no_instruction_is_single_stepped() {
        let Some(lib) = ["/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/x86_64-linux-gnu/libssl.so.3"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
        else {
            return; // another architecture or distribution: nothing to inspect here
        };
        let found = inspect_tls(lib).expect("OpenSSL 3's API");
        let programs: Vec<&str> = found.functions.iter().map(|(p, _)| p[0]).collect();
        assert_eq!(programs, ["ssl_read_ex", "ssl_write_ex", "ssl_handshake"], "{found:?}");
        let bytes = std::fs::read(lib).unwrap();
        for (p, offset) in &found.functions {
            let first = bytes[*offset as usize];
            // push (with or without REX.B): emulated, never single-stepped.
            let push = (0x50..=0x57).contains(&first)
                || (first == 0x41 && (0x50..=0x57).contains(&bytes[*offset as usize + 1]));
            assert!(push, "{}: starts with {first:#x}", p[0]);
        }
        // A file without OpenSSL's API says so.
        assert!(inspect_tls(Path::new("/proc/self/exe")).is_err());
    }

    /// The host's libraries are found before any process maps them, once per file, by the name
    /// processes map them by; a process that maps one names the same (device, inode).
    #[test]
    fn host_tls_libraries_are_found_as_processes_map_them() {
        use std::os::unix::fs::MetadataExt as _;
        let host = system_tls_libraries(Path::new("/"));
        let Some(lib) = host.iter().find(|c| c.in_root.ends_with("libssl.so.3")) else {
            return; // no OpenSSL 3 installed here
        };
        let meta = std::fs::metadata(&lib.path).unwrap();
        assert_eq!(lib.key, Some((meta.dev(), meta.ino())), "{lib:?}");
        // libssl.so links to libssl.so.3, and /lib to /usr/lib: one entry for the file.
        let same = host.iter().filter(|c| c.key == lib.key).count();
        assert_eq!(same, 1, "{host:?}");
        assert!(host.iter().all(|c| is_libssl(&c.in_root) && c.path.is_file()), "{host:?}");
        assert!(system_tls_libraries(Path::new("/nonexistent")).is_empty());

        // A Python that imported ssl maps the library: the same file, by the same key.
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import ssl, sys; print(flush=True); sys.stdin.read()"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().expect("stdout")),
            &mut line,
        )
        .expect("python3 ready");
        let found = tls_candidates(child.id());
        drop(child.stdin.take());
        let _ = child.wait();
        assert!(found[0].path.ends_with("exe"), "the executable first: {found:?}");
        assert!(found[0].key.is_some(), "{found:?}");
        let mapped = found.iter().find(|c| c.key == lib.key);
        let mapped = mapped.unwrap_or_else(|| panic!("{lib:?} among {found:?}"));
        assert_eq!(mapped.in_root, lib.in_root, "{found:?}");
        assert!(mapped.path.starts_with(format!("/proc/{}/root/", child.id())), "{mapped:?}");
    }

    #[test]
    fn maps_devices_are_read_as_stat_names_them() {
        assert_eq!(maps_key("fd:01", "1234"), Some((libc::makedev(0xfd, 1), 1234)));
        assert_eq!(maps_key("103:0a", "7"), Some((libc::makedev(0x103, 0xa), 7)));
        assert_eq!(maps_key("00:00", "0"), None, "anonymous mapping");
        assert_eq!(maps_key("zz:01", "1"), None);
        assert_eq!(maps_key("fd01", "1"), None);
    }

    #[test]
    fn this_test_binary_is_not_go() {
        let me = std::env::current_exe().unwrap();
        assert!(!is_go(&me));
        assert!(!is_go(Path::new("/nonexistent")));
        assert!(!is_go(Path::new("/proc/self/status")));
        assert!(inspect_go(&me).is_err());
    }

    #[test]
    fn reads_the_go_version_from_build_info() {
        let mut data = b"\xff Go buildinf:\x08\x02".to_vec();
        data.resize(32, 0);
        data.push(8);
        data.extend_from_slice(b"go1.19.8");
        data.extend_from_slice(b"\x10ignored");
        assert_eq!(build_version(&data).as_deref(), Some("go1.19.8"));
        // The pointer-based format of Go 1.13 to 1.17.
        data[15] = 0;
        assert_eq!(build_version(&data), None);
        assert_eq!(build_version(b"\xff Go buildinf:"), None);
        assert_eq!(known_goid_offset("go1.19.8"), Some(152));
        assert_eq!(known_goid_offset("go1.30"), None);
    }
}
