//! What the traced program's runtime implies for linking calls to requests.
//!
//! Go schedules goroutines on any OS thread: the thread that read a request may next run a
//! goroutine that calls out for another request, so the kernel must not take a thread's current
//! request as a call's parent there. Go programs are recognised by their `.go.buildinfo` section
//! (present in every Go binary since 1.13, stripped or not). Other runtimes that hand requests
//! between threads are caught in the kernel, when a response is written by another thread than
//! the one that read its request.
use std::{fs::File, path::Path};

use object::{Object as _, ReadCache};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_not_go() {
        let me = std::env::current_exe().unwrap();
        assert!(!is_go(&me));
        assert!(!is_go(Path::new("/nonexistent")));
        assert!(!is_go(Path::new("/proc/self/status")));
    }
}
