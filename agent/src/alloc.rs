//! Memory behaviour of the allocator (mimalloc, the binary's global allocator).
//!
//! Loading the kernel programs parses the kernel's BTF and the object file: tens of MiB
//! allocated and freed in a second. mimalloc keeps freed memory for reuse for a while, which
//! would make that burst the agent's peak resident memory (a DaemonSet has a memory limit). So
//! freed memory is returned at once while starting, and after a short delay once running, where
//! returning it at once would cost the pipeline about a third of its throughput.

/// `mi_option_e` values of the bundled mimalloc (v3).
const ARENA_EAGER_COMMIT: i32 = 4;
const PURGE_DELAY: i32 = 15;

/// Before loading: commit memory as it is used, return freed memory at once.
pub fn starting() {
    // SAFETY: plain option setters, valid at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

/// Once the programs are loaded: return freed memory after 100 ms.
pub fn running() {
    // SAFETY: as above.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 100);
    }
}
