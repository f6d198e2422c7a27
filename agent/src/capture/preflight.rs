//! Host checks before anything is loaded: privileges, BTF, kernel version, tracefs, and the
//! tracepoint layouts the programs rely on. Each failure is a named [`CaptureError`].
use std::{fs, path::Path};

use log::{info, warn};

use super::{CaptureError, programs};

/// Facts about the host that loading needs.
#[derive(Debug, Clone)]
pub struct Host {
    /// `uname -r`.
    pub kernel: String,
    /// /proc/sys/kernel/pid_max: size of the per-tgid selection array.
    pub pid_max: u32,
    /// Where tracefs is mounted.
    pub tracefs: String,
    /// Offset of `child_pid` in `sched:sched_process_fork`.
    pub fork_child_pid_offset: u32,
    /// The kernel's BTF.
    pub btf: String,
}

/// (capability number, name) the agent needs.
const REQUIRED_CAPS: &[(u32, &str)] =
    &[(39, "CAP_BPF"), (38, "CAP_PERFMON"), (19, "CAP_SYS_PTRACE"), (2, "CAP_DAC_READ_SEARCH")];
const CAP_SYS_ADMIN: u32 = 21;

/// Minimum kernel: BPF ring buffer (5.8).
const MIN_KERNEL: (u32, u32) = (5, 8);

/// Runs every check, mounting tracefs when it is missing.
pub fn check() -> Result<Host, CaptureError> {
    let caps = effective_caps()?;
    let missing: Vec<&str> =
        REQUIRED_CAPS.iter().filter(|(n, _)| caps & (1u64 << n) == 0).map(|(_, name)| *name).collect();
    if !missing.is_empty() {
        return Err(CaptureError::MissingCapabilities { missing: missing.join(", ") });
    }
    let btf = std::env::var("TRACEWIRE_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".into());
    if !Path::new(&btf).exists() {
        return Err(CaptureError::NoBtf(btf));
    }
    let kernel = kernel_release()?;
    let (major, minor) = parse_release(&kernel);
    if (major, minor) < MIN_KERNEL {
        return Err(CaptureError::KernelTooOld {
            found: kernel,
            required: format!("{}.{}", MIN_KERNEL.0, MIN_KERNEL.1),
        });
    }
    let pid_max = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(4_194_304)
        .max(1);
    let tracefs = ensure_tracefs(caps & (1u64 << CAP_SYS_ADMIN) != 0)?;
    check_formats(&tracefs)?;
    let fork_child_pid_offset = field_offset(&tracefs, "sched", "sched_process_fork", "child_pid", 4)?;
    Ok(Host { kernel, pid_max, tracefs, fork_child_pid_offset, btf })
}

fn effective_caps() -> Result<u64, CaptureError> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| CaptureError::Io("reading /proc/self/status".into(), e))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0))
}

fn kernel_release() -> Result<String, CaptureError> {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .map_err(|e| CaptureError::Io("reading the kernel release".into(), e))
}

/// "6.18.44-fc-v669" → (6, 18). Unparseable parts are 0.
pub fn parse_release(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

fn has_events(dir: &str) -> bool {
    Path::new(dir).join("events").is_dir()
}

fn ensure_tracefs(can_mount: bool) -> Result<String, CaptureError> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if has_events(dir) {
            return Ok(dir.to_string());
        }
    }
    if !can_mount {
        return Err(CaptureError::Tracefs {
            path: TRACEFS.into(),
            source: std::io::Error::other("not mounted, and CAP_SYS_ADMIN is needed to mount it"),
        });
    }
    let target = std::ffi::CString::new(TRACEFS).map_err(|e| CaptureError::Config(e.to_string()))?;
    let fstype = c"tracefs";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(CaptureError::Tracefs { path: TRACEFS.into(), source: std::io::Error::last_os_error() });
    }
    info!("tracefs was not mounted: mounted it at {TRACEFS}");
    if !has_events(TRACEFS) {
        return Err(CaptureError::Tracefs {
            path: TRACEFS.into(),
            source: std::io::Error::other("mounted, but it has no events directory"),
        });
    }
    Ok(TRACEFS.to_string())
}

/// A field of a tracepoint format file.
#[derive(Debug, PartialEq, Eq)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// Offset in the record.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// Parses a tracefs `format` file ("\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;").
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let mut name = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';') {
                let part = part.trim();
                if let Some(decl) = part.strip_prefix("field:") {
                    // The name is the last identifier, minus any array suffix.
                    let decl = decl.split('[').next().unwrap_or(decl);
                    name = decl.split_whitespace().last().map(str::to_string);
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            Some(Field { name: name?, offset: offset?, size: size? })
        })
        .collect()
}

/// Offset of a field whose position varies between kernels.
fn field_offset(
    tracefs: &str,
    category: &str,
    name: &str,
    field: &str,
    size: usize,
) -> Result<u32, CaptureError> {
    let path = Path::new(tracefs).join("events").join(category).join(name).join("format");
    let text =
        fs::read_to_string(&path).map_err(|e| CaptureError::Io(format!("reading {}", path.display()), e))?;
    match parse_format(&text).into_iter().find(|f| f.name == field) {
        Some(f) if f.size == size && f.offset < 256 => Ok(f.offset as u32),
        other => Err(CaptureError::TracepointFormat {
            tracepoint: format!("{category}/{name}"),
            problem: format!("field {field} unusable: {other:?}"),
        }),
    }
}

fn tracepoint_exists(tracefs: &str, category: &str, name: &str) -> bool {
    Path::new(tracefs).join("events").join(category).join(name).is_dir()
}

/// Whether every tracepoint of a program table exists.
pub fn has_tracepoints(tracefs: &str, table: &[(&str, &str, &str)]) -> bool {
    table.iter().all(|(_, category, name)| tracepoint_exists(tracefs, category, name))
}

fn check_formats(tracefs: &str) -> Result<(), CaptureError> {
    for p in programs::PROGRAMS {
        if !tracepoint_exists(tracefs, p.category, p.tracepoint) {
            return Err(CaptureError::TracepointFormat {
                tracepoint: format!("{}/{}", p.category, p.tracepoint),
                problem: "does not exist on this kernel".into(),
            });
        }
    }
    for (category, name, field, offset, size) in programs::FIXED_FIELDS {
        // The syscall-path hooks may be missing (a kernel built without syscall tracepoints):
        // the socket path does not need them, and choosing the syscall path fails by name.
        let required = programs::PROGRAMS.iter().any(|p| p.category == *category && p.tracepoint == *name);
        if !required && !tracepoint_exists(tracefs, category, name) {
            continue;
        }
        let path = Path::new(tracefs).join("events").join(category).join(name).join("format");
        let text = fs::read_to_string(&path)
            .map_err(|e| CaptureError::Io(format!("reading {}", path.display()), e))?;
        let fields = parse_format(&text);
        match fields.iter().find(|f| f.name == *field) {
            Some(f) if f.offset == *offset && f.size == *size => {}
            Some(f) => {
                return Err(CaptureError::TracepointFormat {
                    tracepoint: format!("{category}/{name}"),
                    problem: format!(
                        "field {field} is at offset {} size {}, this build expects offset {offset} size {size}",
                        f.offset, f.size
                    ),
                });
            }
            None => {
                // Syscall argument names differ between kernels (e.g. `buf` vs `ubuf`); the
                // layout (8-byte slots from 16) is what matters, checked by offset below.
                if *category == "syscalls" && fields.iter().any(|f| f.offset == *offset && f.size == *size) {
                    continue;
                }
                warn!("{category}/{name}: no field {field}");
                return Err(CaptureError::TracepointFormat {
                    tracepoint: format!("{category}/{name}"),
                    problem: format!("has no field {field}"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_releases() {
        assert_eq!(parse_release("6.18.44-fc-v669"), (6, 18));
        assert_eq!(parse_release("5.4.0-150-generic"), (5, 4));
        assert_eq!(parse_release("garbage"), (0, 0));
    }

    #[test]
    fn parses_format_files() {
        let text = "name: inet_sock_set_state\nID: 1\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
            \tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
            \nprint fmt: \"...\"\n";
        let f = parse_format(text);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1], Field { name: "oldstate".into(), offset: 16, size: 4 });
        assert_eq!(f[2], Field { name: "saddr_v6".into(), offset: 40, size: 16 });
    }
}
