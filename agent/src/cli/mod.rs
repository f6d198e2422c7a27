//! Subcommands of the `tracewire` binary.
pub mod capture;
pub mod replay;
pub mod run;
