//! The host's fast path: `host_decap.c` loaded, given the served subnets and
//! attached.

use super::{FastPathError, FastPathReader, attach_ingress, load_object, take_counters};
use crate::classify::VirtualSubnet;

/// The program's name.
const PROGRAM: &str = "host_decap";
/// The object `scripts/build-bpf.sh` builds from `router-core/bpf/host_decap.c`.
static OBJECT: &[u8] = include_bytes!("../../../bpf/host_decap.o");

/// What the host program needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFastPathConfig {
    /// Links to attach to (tc ingress): where tunnels arrive.
    pub links: Vec<String>,
    /// The virtual subnets this host serves (inner destinations decapsulated).
    pub subnets: Vec<VirtualSubnet>,
}

/// The loaded host program and its attachments (detached on drop).
pub struct HostFastPath {
    ebpf: aya::Ebpf,
    reader: FastPathReader,
    links: Vec<String>,
}

impl std::fmt::Debug for HostFastPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostFastPath")
            .field("links", &self.links)
            .finish_non_exhaustive()
    }
}

impl HostFastPath {
    /// Load the program, write the subnets, attach to every link (at least one).
    pub fn start(cfg: &HostFastPathConfig) -> Result<(Self, Vec<String>), FastPathError> {
        if cfg.links.is_empty() {
            return Err(FastPathError::NoLinks {
                reason: "none configured or found".into(),
            });
        }
        let mut ebpf = load_object(PROGRAM, OBJECT, &[])?;
        for s in &cfg.subnets {
            super::router::add_prefix(&mut ebpf, PROGRAM, "vip_v4", "vip_v6", s)?;
        }
        let reader = take_counters(&mut ebpf, PROGRAM)?;
        let mut fp = Self {
            ebpf,
            reader,
            links: Vec::new(),
        };
        for link in &cfg.links {
            attach_ingress(&mut fp.ebpf, PROGRAM, link)?;
            fp.links.push(link.clone());
        }
        let links = fp.links.clone();
        Ok((fp, links))
    }

    /// A reader of the program's counters.
    pub fn reader(&self) -> FastPathReader {
        self.reader.clone()
    }

    /// The links attached to.
    pub fn links(&self) -> &[String] {
        &self.links
    }
}
