//! `[shaping]`: kernel bandwidth shares on an egress link.

use serde::Deserialize;

use super::{Check, ConfigError};

/// `[shaping]`: bandwidth shares of return traffic (by VIP source prefix) on an
/// egress link, realised as an HTB hierarchy in the kernel (DESIGN.md §7).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShapingFile {
    link: String,
    rate_mbit: u64,
    default_class: Option<u16>,
    class: Vec<ShapingClassFile>,
}

/// `[[shaping.class]]`: one share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShapingClassFile {
    id: u16,
    weight: u32,
    #[serde(default)]
    subnets: Vec<String>,
}

/// A validated `[shaping]` section.
#[derive(Debug, Clone)]
pub(crate) struct Shaping {
    /// Egress link the tree is applied to.
    pub(crate) link: String,
    /// The share tree.
    pub(crate) tree: router_core::linux::tc::ShareTreeConfig,
}

/// Most classes in `[shaping]`.
const MAX_SHAPING_CLASSES: usize = 256;

impl Shaping {
    pub(super) fn from_file(c: &Check<'_>, f: &ShapingFile) -> Result<Self, ConfigError> {
        use router_core::linux::tc::{ShareClassConfig, ShareTreeConfig};
        let link = c.tun_name("shaping.link", &f.link)?;
        if f.rate_mbit == 0 || f.rate_mbit > 1_000_000 {
            return Err(c.err("shaping.rate_mbit", "must be 1 to 1000000 (Mbit/s)"));
        }
        if f.class.is_empty() || f.class.len() > MAX_SHAPING_CLASSES {
            return Err(c.err(
                "shaping.class",
                format!("give 1 to {MAX_SHAPING_CLASSES} [[shaping.class]] entries"),
            ));
        }
        let mut tree = ShareTreeConfig::new(f.rate_mbit * 1_000_000);
        for (i, class) in f.class.iter().enumerate() {
            if class.weight == 0 {
                return Err(c.err(format!("shaping.class[{i}].weight"), "must be at least 1"));
            }
            tree = tree.with_class(ShareClassConfig::new(class.id, class.weight));
            for (j, text) in class.subnets.iter().enumerate() {
                let subnet = c.subnet(&format!("shaping.class[{i}].subnets[{j}]"), text)?;
                tree = tree.with_filter(subnet, class.id);
            }
        }
        if let Some(d) = f.default_class {
            tree = tree.with_default(d);
        }
        tree.validate()
            .map_err(|e| c.err("shaping", e.to_string()))?;
        Ok(Self { link, tree })
    }
}
