//! Capture errors. Each names what is wrong and, where there is one, what to do about it.
use thiserror::Error;

/// Why capture could not start or continue.
#[derive(Debug, Error)]
pub enum CaptureError {
    /// Not running as root and missing capabilities.
    #[error(
        "missing capabilities: {missing} (run as root, or grant CAP_BPF, CAP_PERFMON, \
         CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and CAP_SYS_ADMIN)"
    )]
    MissingCapabilities {
        /// Comma-separated capability names.
        missing: String,
    },
    /// The kernel has no BTF.
    #[error("kernel BTF not found at {0} (tracewire needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)")]
    NoBtf(String),
    /// Kernel older than the minimum.
    #[error("kernel {found} is too old: tracewire needs Linux {required} or newer (BPF ring buffer)")]
    KernelTooOld {
        /// Running kernel release.
        found: String,
        /// Minimum release.
        required: String,
    },
    /// tracefs could not be found or mounted.
    #[error("tracefs is not mounted and mounting it at {path} failed: {source}")]
    Tracefs {
        /// Mount point tried.
        path: String,
        /// The mount error.
        #[source]
        source: std::io::Error,
    },
    /// A tracepoint this build depends on does not exist or changed layout.
    #[error("tracepoint {tracepoint}: {problem}")]
    TracepointFormat {
        /// category/name.
        tracepoint: String,
        /// What differs.
        problem: String,
    },
    /// Loading the object failed (verifier output included).
    #[error("loading the kernel programs failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// A program in the table is missing from the object.
    #[error("program {0} missing from the kernel object (build mismatch)")]
    MissingProgram(&'static str),
    /// A map is missing from the object.
    #[error("map {0} missing from the kernel object (build mismatch)")]
    MissingMap(&'static str),
    /// A program failed to load or attach.
    #[error("program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// aya's error (verifier log included for load errors).
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The thread loading a program ended without a result.
    #[error("program {0}: the thread loading it panicked")]
    LoadThread(&'static str),
    /// A map operation failed.
    #[error("map operation failed: {0}")]
    Map(#[source] aya::maps::MapError),
    /// Invalid option.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A selection target does not exist.
    #[error("{0}")]
    Selection(String),
    /// An I/O error with context.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A process id beyond the selection array (pid_max raised after the agent started).
    #[error("pid {0} is beyond kernel.pid_max as it was when tracewire started")]
    PidBeyondMax(u32),
}
