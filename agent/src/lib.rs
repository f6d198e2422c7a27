//! tracewire: zero-instrumentation tracing of unmodified services with eBPF.
//!
//! Modules follow the data flow: `capture` (kernel programs, ring buffer) → `events` (decoding,
//! clocks) → later stages. `cli` holds the subcommands.
pub mod alloc;
pub mod capture;
pub mod cli;
pub mod config;
pub mod correlate;
pub mod events;
pub mod export;
pub mod metadata;
pub mod protocol;
pub mod sampling;
