//! tracewire's kernel programs.
//!
//! Only syscall, scheduler and socket tracepoints are used: kprobes and fentry/fexit are disabled
//! on many hardened kernels, and tracepoint formats are a stable ABI (userspace checks them
//! against tracefs before loading). See `probes/` for the hook strategy of each family.
#![no_std]
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod maps;
mod probes;
mod util;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A reachable panic makes the verifier reject the program ("last insn is not an exit or
    // jmp"), so panics surface at load time instead of being silent.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
