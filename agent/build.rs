//! Builds the kernel programs (crate `tracewire-ebpf`) for the bpf target with bpf-linker and puts
//! the object in OUT_DIR, where `capture` embeds it. Set AYA_BUILD_SKIP=1 to skip (userspace-only
//! checks on machines without bpf-linker), and TRACEWIRE_BPF_TOOLCHAIN to build them with a given
//! nightly.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracewire-ebpf")
        .ok_or_else(|| anyhow!("tracewire-ebpf package not found"))?;
    let root = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("tracewire-ebpf manifest has no parent"))?;
    // A pinned nightly (e.g. `nightly-2026-05-19`) for reproducible images; `nightly` otherwise.
    println!("cargo:rerun-if-env-changed=TRACEWIRE_BPF_TOOLCHAIN");
    let pinned = std::env::var("TRACEWIRE_BPF_TOOLCHAIN").ok().filter(|t| !t.is_empty());
    let toolchain = pinned.as_deref().map_or(Toolchain::Nightly, Toolchain::Custom);
    aya_build::build_ebpf(
        [Package { name: "tracewire-ebpf", root_dir: root.as_str(), ..Default::default() }],
        toolchain,
    )
}
