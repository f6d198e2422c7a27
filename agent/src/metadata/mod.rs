//! Who a process is, as an OpenTelemetry resource: read once per process from /proc, off the
//! per-event path. The traced service is the resource, never the agent.
use std::{collections::HashMap, fs, path::Path, sync::Arc};

/// Resource attributes of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// `service.name`.
    pub service_name: String,
    /// Extra attributes (key, value), all strings except `process.pid`.
    pub attributes: Vec<(String, String)>,
    /// `process.pid`.
    pub pid: u32,
}

/// Interpreters whose script, not the interpreter, names the service.
const INTERPRETERS: &[&str] =
    &["python", "python2", "python3", "node", "nodejs", "ruby", "perl", "php", "bash", "sh"];

/// Parses `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k2=v2`, percent-encoded); `None` on a decode error
/// (the whole variable is then discarded, as the specification requires).
pub fn parse_resource_attributes(s: &str) -> Option<Vec<(String, String)>> {
    fn decode(s: &str) -> Option<String> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    }
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=')?;
        out.push((decode(k.trim())?, decode(v.trim())?));
    }
    Some(out)
}

/// Derives `service.name` from a process's environment and command line.
pub fn service_name(env: &HashMap<String, String>, argv: &[String], exe_name: &str) -> String {
    if let Some(n) = env.get("OTEL_SERVICE_NAME").filter(|n| !n.is_empty()) {
        return n.clone();
    }
    if let Some(attrs) = env.get("OTEL_RESOURCE_ATTRIBUTES").and_then(|s| parse_resource_attributes(s))
        && let Some((_, v)) = attrs.iter().find(|(k, _)| k == "service.name")
    {
        return v.clone();
    }
    let base =
        |p: &str| Path::new(p).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let arg0 = argv.first().map(|a| base(a)).unwrap_or_default();
    let interp = INTERPRETERS.iter().any(|i| {
        arg0 == *i || (arg0.starts_with(i) && arg0[i.len()..].chars().all(|c| c.is_ascii_digit() || c == '.'))
    });
    if interp {
        // `python3 app.py` → app; `python3 -m http.server` → http.server
        let mut it = argv.iter().skip(1);
        while let Some(a) = it.next() {
            if a == "-m" {
                return it.next().cloned().unwrap_or_else(|| arg0.clone());
            }
            if a.starts_with('-') {
                continue;
            }
            let name = base(a);
            return name.rsplit_once('.').map_or(name.clone(), |(stem, _)| stem.to_string());
        }
    }
    if arg0 == "java" {
        // java -jar app.jar → app; java com.example.Main → Main
        let mut it = argv.iter().skip(1);
        while let Some(a) = it.next() {
            if a == "-jar" {
                let jar = it.next().map(|j| base(j)).unwrap_or_default();
                return jar.trim_end_matches(".jar").to_string();
            }
            if a == "-cp" || a == "-classpath" {
                it.next();
                continue;
            }
            if !a.starts_with('-') {
                return a.rsplit('.').next().unwrap_or(a).to_string();
            }
        }
    }
    if !exe_name.is_empty() {
        return exe_name.to_string();
    }
    "unknown_service".to_string()
}

/// The 64-hex container id in a /proc/PID/cgroup text, if any.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.rsplit(':').next()?;
        path.split(['/', '-', '.'])
            .find(|seg| seg.len() == 64 && seg.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_string)
    })
}

/// The Kubernetes pod uid in a /proc/PID/cgroup text, if the process runs in a pod: the kubelet
/// names pod cgroups `pod<uid>` (cgroupfs driver) or `kubepods-<qos>-pod<uid with _>.slice`
/// (systemd driver). With `container.id` it lets a Collector's k8sattributes processor add the
/// pod's name, namespace and owners.
pub fn pod_uid(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.rsplit(':').next()?;
        path.split('/').find_map(|seg| {
            let seg = seg.strip_suffix(".slice").unwrap_or(seg);
            let rest = match seg.strip_prefix("pod") {
                Some(r) => r,
                None => &seg[seg.rfind("-pod")? + 4..],
            };
            let uid = rest.replace('_', "-");
            let b = uid.as_bytes();
            let ok = b.len() == 36
                && b.iter().enumerate().all(|(i, c)| {
                    if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() }
                });
            ok.then_some(uid)
        })
    })
}

/// The node's name, read once: `NODE_NAME` when set (a DaemonSet sets it from the downward API's
/// `spec.nodeName`; in a pod the kernel's hostname is the pod's own), else the hostname.
fn node_name() -> &'static NodeName {
    static NODE: std::sync::OnceLock<NodeName> = std::sync::OnceLock::new();
    NODE.get_or_init(|| match std::env::var("NODE_NAME").ok().filter(|n| !n.trim().is_empty()) {
        Some(n) => NodeName { name: n.trim().to_string(), kubernetes: true },
        None => NodeName {
            name: fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            kubernetes: false,
        },
    })
}

/// The node's name (`host.name`).
pub fn host_name() -> &'static str {
    &node_name().name
}

struct NodeName {
    name: String,
    /// Named by Kubernetes (`k8s.node.name` too).
    kubernetes: bool,
}

impl ProcessInfo {
    /// Reads a live process. A process that is gone gets `unknown_service:<comm>` when its
    /// name is known.
    pub fn read(pid: u32, comm_hint: Option<&str>) -> ProcessInfo {
        let dir = format!("/proc/{pid}");
        let exe = fs::read_link(format!("{dir}/exe")).ok();
        let exe_name = exe
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .or_else(|| comm_hint.map(str::to_string))
            .unwrap_or_default();
        let argv: Vec<String> = fs::read(format!("{dir}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let env: HashMap<String, String> = fs::read(format!("{dir}/environ"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter_map(|kv| {
                        let kv = String::from_utf8_lossy(kv);
                        let (k, v) = kv.split_once('=')?;
                        // Only the OpenTelemetry variables are kept: the rest may hold secrets.
                        k.starts_with("OTEL_").then(|| (k.to_string(), v.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let service = if argv.is_empty() && exe.is_none() {
            format!("unknown_service:{exe_name}")
        } else {
            service_name(&env, &argv, &exe_name)
        };
        let node = node_name();
        let host = node.name.clone();
        let mut attributes = vec![
            ("service.instance.id".to_string(), format!("{host}/{pid}")),
            ("host.name".to_string(), host),
            ("process.executable.name".to_string(), exe_name.clone()),
            ("telemetry.sdk.name".to_string(), "tracewire".to_string()),
            ("telemetry.sdk.language".to_string(), "rust".to_string()),
            ("telemetry.sdk.version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("telemetry.distro.name".to_string(), "tracewire".to_string()),
        ];
        if let Some(exe) = &exe {
            attributes.push(("process.executable.path".to_string(), exe.display().to_string()));
        }
        if let Some(first) = argv.first() {
            // Arguments may hold secrets: only the program (and script) are kept.
            let mut shown = vec![first.clone()];
            if let Some(script) = argv.get(1).filter(|a| {
                !a.starts_with('-') && (a.ends_with(".py") || a.ends_with(".js") || a.ends_with(".jar"))
            }) {
                shown.push(script.clone());
            }
            if argv.len() > shown.len() {
                shown.push("[args redacted]".to_string());
            }
            attributes.push(("process.command_line".to_string(), shown.join(" ")));
        }
        if node.kubernetes {
            attributes.push(("k8s.node.name".to_string(), node.name.clone()));
        }
        if let Ok(cgroup) = fs::read_to_string(format!("{dir}/cgroup")) {
            if let Some(id) = container_id(&cgroup) {
                attributes.push(("container.id".to_string(), id));
            }
            if let Some(uid) = pod_uid(&cgroup) {
                attributes.push(("k8s.pod.uid".to_string(), uid));
            }
        }
        if let Some(attrs) = env.get("OTEL_RESOURCE_ATTRIBUTES").and_then(|s| parse_resource_attributes(s)) {
            for (k, v) in attrs {
                if k != "service.name" && !attributes.iter().any(|(ek, _)| *ek == k) {
                    attributes.push((k, v));
                }
            }
        }
        ProcessInfo { service_name: service, attributes, pid }
    }
}

/// Process resources by pid, read when first needed and forgotten when the process exits.
/// Bounded: at most `cap` processes are remembered.
#[derive(Debug)]
pub struct Resources {
    by_pid: HashMap<u32, Arc<ProcessInfo>>,
    cap: usize,
}

impl Resources {
    /// An empty cache holding at most `cap` processes.
    pub fn new(cap: usize) -> Self {
        Resources { by_pid: HashMap::new(), cap }
    }

    /// Reads `pid` now if it is not known yet (call while the process is alive, e.g. when one
    /// of its connections opens).
    pub fn observe(&mut self, pid: u32) {
        if !self.by_pid.contains_key(&pid) {
            if self.by_pid.len() >= self.cap {
                // Forget an arbitrary entry: it is re-read (or named from its pid) if needed.
                if let Some(k) = self.by_pid.keys().next().copied() {
                    self.by_pid.remove(&k);
                }
            }
            self.by_pid.insert(pid, Arc::new(ProcessInfo::read(pid, None)));
        }
    }

    /// The resource of `pid`.
    pub fn get(&mut self, pid: u32) -> Arc<ProcessInfo> {
        self.observe(pid);
        self.by_pid.get(&pid).cloned().unwrap_or_else(|| Arc::new(ProcessInfo::read(pid, None)))
    }

    /// Inserts a known resource (recorded captures, tests).
    pub fn insert(&mut self, info: ProcessInfo) {
        self.by_pid.insert(info.pid, Arc::new(info));
    }

    /// The process exited.
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn service_names() {
        let none = HashMap::new();
        assert_eq!(service_name(&none, &argv("python3 app.py --port 1"), "python3.11"), "app");
        assert_eq!(
            service_name(&none, &argv("/usr/bin/python3.11 -u /srv/users/main.py"), "python3.11"),
            "main"
        );
        assert_eq!(service_name(&none, &argv("python3 -m http.server 8000"), "python3.11"), "http.server");
        assert_eq!(service_name(&none, &argv("node server.js"), "node"), "server");
        assert_eq!(service_name(&none, &argv("java -Xmx1g -jar /app/pricing.jar"), "java"), "pricing");
        assert_eq!(service_name(&none, &argv("nginx: worker process"), "nginx"), "nginx");
        let mut env = HashMap::new();
        env.insert("OTEL_RESOURCE_ATTRIBUTES".to_string(), "service.name=cart%2Dsvc,team=a".to_string());
        assert_eq!(service_name(&env, &argv("python3 app.py"), "python3"), "cart-svc");
        env.insert("OTEL_SERVICE_NAME".to_string(), "checkout".to_string());
        assert_eq!(service_name(&env, &argv("python3 app.py"), "python3"), "checkout");
    }

    #[test]
    fn resource_attribute_decoding() {
        assert_eq!(
            parse_resource_attributes("a=1, b=x%2Cy"),
            Some(vec![("a".into(), "1".into()), ("b".into(), "x,y".into())])
        );
        assert_eq!(parse_resource_attributes("a=%zz"), None);
        assert_eq!(parse_resource_attributes("novalue"), None);
    }

    #[test]
    fn pod_uids() {
        let uid = "0f8f0b8e-5c4a-4d2e-9b1a-2f3c4d5e6f70";
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope\n",
            uid.replace('-', "_"),
            "a".repeat(64)
        );
        assert_eq!(pod_uid(&systemd).as_deref(), Some(uid));
        assert_eq!(
            pod_uid(&format!("0::/kubepods/besteffort/pod{uid}/{}\n", "b".repeat(64))).as_deref(),
            Some(uid)
        );
        assert_eq!(
            pod_uid(&format!("0::/kubepods.slice/kubepods-pod{}.slice\n", uid.replace('-', "_"))).as_deref(),
            Some(uid)
        );
        assert_eq!(pod_uid("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        assert_eq!(pod_uid("0::/system.slice/podman-1234.scope\n"), None);
    }

    #[test]
    fn container_ids() {
        let id = "3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e";
        assert_eq!(
            container_id(&format!("0::/kubepods.slice/cri-containerd-{id}.scope\n")).as_deref(),
            Some(id)
        );
        assert_eq!(container_id("0::/user.slice/session-1.scope\n"), None);
    }

    #[test]
    fn own_process_is_read() {
        let me = ProcessInfo::read(std::process::id(), None);
        assert!(!me.service_name.is_empty());
        assert!(me.attributes.iter().any(|(k, v)| k == "telemetry.sdk.name" && v == "tracewire"));
    }
}
