//! The kernel's per-process selection (the `WATCHED` array), mapped into the agent's memory: one
//! byte of `WATCH_*` bits per tgid, eight to each 8-byte map value (see `ebpf/src/maps.rs`).
//! The agent changes its bytes with atomic operations, as the kernel does, so that neither side's
//! updates (a selection here; a fork, an exit, a first client connection there) are ever
//! overwritten by a read-modify-write of the other's.
use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU8, Ordering},
};

use aya::maps::{Array, IterableMap as _, MapData};

use super::CaptureError;

/// The mapped array.
pub struct Watched {
    ptr: *mut u8,
    len: usize,
    /// Keeps the map open.
    _map: Array<MapData, u64>,
}

// SAFETY: the mapping is shared memory accessed only through atomics (see `byte`); the pointer
// stays valid until `drop`.
unsafe impl Send for Watched {}
// SAFETY: as above.
unsafe impl Sync for Watched {}

impl Watched {
    /// Maps `array`, created with `BPF_F_MMAPABLE`.
    pub fn map(array: Array<MapData, u64>) -> Result<Self, CaptureError> {
        let len = array.len() as usize * 8;
        let fd = array.map().fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the whole array, which the kernel allows for mmapable
        // arrays; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(CaptureError::Io(
                "mapping the selection array".into(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Watched { ptr: ptr.cast(), len, _map: array })
    }

    fn byte(&self, tgid: u32) -> Option<&AtomicU8> {
        let i = tgid as usize;
        // SAFETY: in bounds of the mapping, which lives as long as `self`; every access is
        // atomic, and the kernel side writes single bytes.
        (i < self.len).then(|| unsafe { AtomicU8::from_ptr(self.ptr.add(i)) })
    }

    /// `tgid`'s bits (0 beyond pid_max).
    pub fn get(&self, tgid: u32) -> u8 {
        self.byte(tgid).map_or(0, |b| b.load(Ordering::Relaxed))
    }

    /// Sets `bits` of `tgid`.
    pub fn set(&self, tgid: u32, bits: u8) -> Result<(), CaptureError> {
        let b = self.byte(tgid).ok_or(CaptureError::PidBeyondMax(tgid))?;
        b.fetch_or(bits, Ordering::Relaxed);
        Ok(())
    }

    /// Clears `bits` of `tgid`.
    pub fn clear(&self, tgid: u32, bits: u8) -> Result<(), CaptureError> {
        let b = self.byte(tgid).ok_or(CaptureError::PidBeyondMax(tgid))?;
        b.fetch_and(!bits, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
