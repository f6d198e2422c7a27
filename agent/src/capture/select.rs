//! Which processes are traced: all, or those named by pid, executable glob or cgroup. The kernel
//! keeps the answer in the WATCHED array (children of watched processes are watched from fork on,
//! cgroups are checked at exec); userspace makes the initial choice and re-checks globs at exec.
use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use glob::Pattern;

use super::CaptureError;

/// Process selection.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Every process except the agent.
    All,
    /// Only processes matching any of these (and their descendants).
    Only {
        /// Process ids.
        pids: Vec<u32>,
        /// Globs on the executable path or name (`*/python3*`, `nginx`).
        exes: Vec<Pattern>,
        /// cgroup v2 directories (absolute, or relative to the cgroup2 mount).
        cgroups: Vec<PathBuf>,
    },
}

impl Selection {
    /// True when `exe` matches one of the globs (on the full path or the file name).
    pub fn exe_matches(&self, exe: &Path) -> bool {
        let Selection::Only { exes, .. } = self else {
            return false;
        };
        let name = exe.file_name().map(Path::new).unwrap_or(exe);
        exes.iter().any(|p| p.matches_path(exe) || p.matches_path(name))
    }

    /// The processes selected right now, descendants included.
    pub fn initial_pids(&self) -> Result<Vec<u32>, CaptureError> {
        let Selection::Only { pids, exes: _, cgroups } = self else {
            return Ok(Vec::new());
        };
        let mut roots: HashSet<u32> = HashSet::new();
        for pid in pids {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(CaptureError::Selection(format!("--pid {pid}: no such process")));
            }
            roots.insert(*pid);
        }
        let table = process_table();
        for (pid, _, exe) in &table {
            if let Some(exe) = exe
                && self.exe_matches(exe)
            {
                roots.insert(*pid);
            }
        }
        for cg in cgroups {
            let dir = cgroup_dir(cg)?;
            collect_cgroup_procs(&dir, &mut roots);
        }
        // Descendants: a pre-fork server's workers, children of a selected shell.
        let mut selected = roots.clone();
        loop {
            let before = selected.len();
            for (pid, ppid, _) in &table {
                if selected.contains(ppid) {
                    selected.insert(*pid);
                }
            }
            if selected.len() == before {
                break;
            }
        }
        let mut out: Vec<u32> = selected.into_iter().collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The cgroup directories named, for the kernel's exec-time check.
    pub fn cgroups(&self) -> &[PathBuf] {
        match self {
            Selection::Only { cgroups, .. } => cgroups,
            Selection::All => &[],
        }
    }
}

/// (pid, ppid, exe) of every process.
fn process_table() -> Vec<(u32, u32, Option<PathBuf>)> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter_map(|p| {
            let stat = p.stat().ok()?;
            Some((p.pid as u32, stat.ppid as u32, p.exe().ok()))
        })
        .collect()
}

/// The cgroup2 mount point that reaches highest in the hierarchy, from /proc/self/mountinfo
/// (never assumed). In a container with its own cgroup namespace, the runtime's /sys/fs/cgroup
/// is the container's subtree (its root shows as `/`), while the node's hierarchy bind-mounted
/// from the host shows a root above the namespace (`/..`, `/../..`): that one reaches every
/// socket of the node, which the sock_ops program needs.
pub fn cgroup2_mount() -> Result<PathBuf, CaptureError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CaptureError::Io("reading /proc/self/mountinfo".into(), e))?;
    let (path, above) = highest_cgroup2(&info)
        .ok_or_else(|| CaptureError::Selection("no cgroup2 filesystem is mounted".into()))?;
    if above == 0 && in_cgroup_namespace() {
        log::warn!(
            "tracewire runs in a cgroup namespace and sees only its own cgroup subtree at {}: trace \
             context in TCP options reaches only sockets in it; mount the node's cgroup2 \
             hierarchy into the container (hostPath /sys/fs/cgroup)",
            path.display()
        );
    }
    Ok(path)
}

/// The cgroup2 mount whose root is highest (most `..` above this cgroup namespace's root), and
/// how many levels above it is; the first such one.
fn highest_cgroup2(mountinfo: &str) -> Option<(PathBuf, usize)> {
    let mut best: Option<(PathBuf, usize)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mut fields = left.split_whitespace().skip(3);
        let (Some(root), Some(point)) = (fields.next(), fields.next()) else {
            continue;
        };
        let above =
            root.split('/').take_while(|seg| seg.is_empty() || *seg == "..").filter(|s| *s == "..").count();
        if best.as_ref().is_none_or(|(_, b)| above > *b) {
            best = Some((PathBuf::from(point), above));
        }
    }
    best
}

/// Whether this process is in a cgroup namespace other than the initial one (whose inode number
/// the kernel fixes: `PROC_CGROUP_INIT_INO`).
fn in_cgroup_namespace() -> bool {
    const PROC_CGROUP_INIT_INO: u64 = 0xEFFF_FFFB;
    fs::metadata("/proc/self/ns/cgroup").is_ok_and(|m| m.ino() != PROC_CGROUP_INIT_INO)
}

fn cgroup_dir(path: &Path) -> Result<PathBuf, CaptureError> {
    let dir = if path.is_absolute() && path.is_dir() {
        path.to_path_buf()
    } else {
        let rel = path.strip_prefix("/").unwrap_or(path);
        cgroup2_mount()?.join(rel)
    };
    if !dir.join("cgroup.procs").exists() {
        return Err(CaptureError::Selection(format!(
            "--cgroup {}: not a cgroup v2 directory ({} has no cgroup.procs)",
            path.display(),
            dir.display()
        )));
    }
    Ok(dir)
}

/// The cgroup id the kernel reports for tasks in `path` (the directory's inode number).
pub fn cgroup_id(path: &Path) -> Result<u64, CaptureError> {
    let dir = cgroup_dir(path)?;
    fs::metadata(&dir).map(|m| m.ino()).map_err(|e| CaptureError::Io(format!("stat {}", dir.display()), e))
}

fn collect_cgroup_procs(dir: &Path, out: &mut HashSet<u32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_cgroup_procs(&e.path(), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exe_globs_match_path_or_name() {
        let s = Selection::Only {
            pids: vec![],
            exes: vec![Pattern::new("python3*").unwrap(), Pattern::new("/usr/sbin/ngin?").unwrap()],
            cgroups: vec![],
        };
        assert!(s.exe_matches(Path::new("/usr/bin/python3.11")));
        assert!(s.exe_matches(Path::new("/usr/sbin/nginx")));
        assert!(!s.exe_matches(Path::new("/usr/bin/curl")));
        assert!(!Selection::All.exe_matches(Path::new("/usr/bin/curl")));
    }

    #[test]
    fn own_pid_and_children_are_found() {
        let me = std::process::id();
        let s = Selection::Only { pids: vec![me], exes: vec![], cgroups: vec![] };
        assert!(s.initial_pids().unwrap().contains(&me));
        let missing = Selection::Only { pids: vec![u32::MAX - 1], exes: vec![], cgroups: vec![] };
        assert!(missing.initial_pids().is_err());
    }

    #[test]
    fn the_cgroup2_mount_reaching_highest_is_chosen() {
        // A container: the runtime's namespaced mount first, the node's bind-mounted after it.
        let container = "1 0 0:30 / / rw - overlay overlay rw\n\
            2 1 0:38 / /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n\
            3 1 0:38 /../../.. /host/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(highest_cgroup2(container), Some((PathBuf::from("/host/sys/fs/cgroup"), 3)));
        let host = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(highest_cgroup2(host), Some((PathBuf::from("/sys/fs/cgroup/unified"), 0)));
        assert_eq!(highest_cgroup2("1 0 0:30 / / rw - ext4 /dev/vda rw\n"), None);
    }
}
