//! The share-tree model ([`ShareSpec`]): which classes share a resource, under
//! which parent, by what weight and within which rates, and which opaque keys
//! (for a link: source subnets) select each leaf.
//!
//! It is the one description every realisation builds from (DESIGN.md §7):
//! [`ShareTree`](crate::ShareTree) here ([`ShareTree::add_spec`](crate::ShareTree::add_spec)),
//! the kernel's HTB hierarchy and the userspace link scheduler in router-core.
//! A spec is checked once, when it is made: ids are unique, parents come before
//! their children, weights are at least 1, depth and size are bounded, and every
//! key and the default name a leaf. What a realisation adds (link rates, HTB's
//! reserved ids) it checks itself.

use std::collections::{BTreeMap, BTreeSet};

use crate::RateLimit;
use crate::error::{ShareError, SpecError};
use crate::tree::{NodeId, ShareTree};

/// One class of a [`ShareSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassSpec {
    /// Names the class; keep it stable across updates (realisations match
    /// classes by id and change them in place). HTB uses it as the minor `1:ID`.
    pub id: u16,
    /// The parent class; `None` for a class directly under the root.
    pub parent: Option<u16>,
    /// Share among its siblings (at least 1).
    pub weight: u32,
    /// Guaranteed rate in units per second instead of the weight share of the
    /// parent's rate (the weight still counts in the siblings' sum).
    pub rate: Option<u64>,
    /// Most units per second the class may use, borrowing included; `None`:
    /// whatever the root has (work-conserving).
    pub ceil: Option<u64>,
}

impl ClassSpec {
    /// A class `id` of `weight` directly under the root, without rates.
    pub fn new(id: u16, weight: u32) -> Self {
        Self {
            id,
            parent: None,
            weight,
            rate: None,
            ceil: None,
        }
    }

    /// Same class under `parent`.
    #[must_use]
    pub fn under(mut self, parent: u16) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Same class with a guaranteed rate.
    #[must_use]
    pub fn with_rate(mut self, rate: u64) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Same class with a ceiling.
    #[must_use]
    pub fn with_ceil(mut self, ceil: u64) -> Self {
        self.ceil = Some(ceil);
        self
    }
}

/// A key (opaque here; for a link, a source prefix) whose items go to a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafKey<K> {
    /// The key.
    pub key: K,
    /// The leaf class it selects.
    pub class: u16,
}

/// Bounds a [`ShareSpec`] is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecLimits {
    /// Most classes, the root not counted.
    pub max_classes: usize,
    /// Deepest a class may sit (a class under the root is at depth 1).
    pub max_depth: usize,
}

impl Default for SpecLimits {
    fn default() -> Self {
        Self {
            max_classes: 4095,
            max_depth: 8,
        }
    }
}

/// A checked share tree: classes (parents before children, in the order
/// given), the keys that select leaves, and the leaf for items no key selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec<K> {
    classes: Vec<ClassSpec>,
    keys: Vec<LeafKey<K>>,
    default_class: Option<u16>,
}

impl<K: Ord> ShareSpec<K> {
    /// Checks and builds a spec. `classes` must list every parent before its
    /// children; the first fault found, in that order, is returned (the
    /// default is checked before the keys).
    pub fn new(
        classes: Vec<ClassSpec>,
        keys: Vec<LeafKey<K>>,
        default_class: Option<u16>,
        limits: SpecLimits,
    ) -> Result<Self, SpecError> {
        if classes.is_empty() {
            return Err(SpecError::Empty);
        }
        let spec = Self {
            classes,
            keys,
            default_class,
        };
        spec.check_classes(limits)?;
        spec.check_keys()?;
        Ok(spec)
    }

    fn check_classes(&self, limits: SpecLimits) -> Result<(), SpecError> {
        let mut seen = BTreeSet::new();
        for c in &self.classes {
            if !seen.insert(c.id) {
                return Err(SpecError::DuplicateClass { id: c.id });
            }
            if seen.len() > limits.max_classes {
                return Err(SpecError::TooManyClasses {
                    limit: limits.max_classes,
                });
            }
            if let Some(parent) = c.parent
                && (parent == c.id || !seen.contains(&parent))
            {
                return Err(SpecError::ParentNotBefore { id: c.id, parent });
            }
            if self.depth(c.id) > limits.max_depth {
                return Err(SpecError::TooDeep {
                    id: c.id,
                    limit: limits.max_depth,
                });
            }
            if c.weight == 0 {
                return Err(SpecError::ZeroWeight { id: c.id });
            }
        }
        Ok(())
    }

    fn check_keys(&self) -> Result<(), SpecError> {
        let leaf = |id: u16| match self.class(id) {
            None => Err(false),
            Some(_) if !self.is_leaf(id) => Err(true),
            Some(_) => Ok(()),
        };
        if let Some(id) = self.default_class {
            leaf(id).map_err(|inner| match inner {
                false => SpecError::UnknownDefault { id },
                true => SpecError::DefaultNotLeaf { id },
            })?;
        }
        let mut keys = BTreeSet::new();
        for (index, k) in self.keys.iter().enumerate() {
            let id = k.class;
            leaf(id).map_err(|inner| match inner {
                false => SpecError::KeyUnknownClass { index, id },
                true => SpecError::KeyNotLeaf { index, id },
            })?;
            if !keys.insert(&k.key) {
                return Err(SpecError::DuplicateKey { index });
            }
        }
        Ok(())
    }
}

impl<K> ShareSpec<K> {
    /// Every class, parents before children.
    pub fn classes(&self) -> &[ClassSpec] {
        &self.classes
    }

    /// The keys, in the order given.
    pub fn keys(&self) -> &[LeafKey<K>] {
        &self.keys
    }

    /// The leaf of items no key selects (`None`: refuse them).
    pub fn default_class(&self) -> Option<u16> {
        self.default_class
    }

    /// The class `id`.
    pub fn class(&self, id: u16) -> Option<&ClassSpec> {
        self.classes.iter().find(|c| c.id == id)
    }

    /// The children of `parent` (`None`: of the root), in order.
    pub fn children(&self, parent: Option<u16>) -> impl Iterator<Item = &ClassSpec> {
        self.classes.iter().filter(move |c| c.parent == parent)
    }

    /// Whether class `id` has no children (it holds items).
    pub fn is_leaf(&self, id: u16) -> bool {
        self.children(Some(id)).next().is_none()
    }

    /// How far below the root class `id` sits (1 for a top-level class; 0 if
    /// unknown). Bounded by the class count, so a cycle cannot loop.
    pub fn depth(&self, id: u16) -> usize {
        let mut depth = 0;
        let mut at = self.class(id);
        while let Some(c) = at {
            depth += 1;
            if depth > self.classes.len() {
                break;
            }
            at = c.parent.and_then(|p| self.class(p));
        }
        depth
    }

    /// Sum of the weights of `parent`'s children.
    pub fn weight_sum(&self, parent: Option<u16>) -> u64 {
        self.children(parent).map(|c| u64::from(c.weight)).sum()
    }
}

impl<T> ShareTree<T> {
    /// Builds `spec` under `parent`: one node per class with its weight, and for
    /// a class with a ceil a rate limit of that many units/s with a bucket of
    /// `burst` units (guaranteed rates have no counterpart: SFQ shares by
    /// weight). Returns the node of each class. On an error the nodes added so
    /// far stay; remove the subtree to undo.
    pub fn add_spec<K>(
        &mut self,
        parent: NodeId,
        spec: &ShareSpec<K>,
        burst: u64,
    ) -> Result<BTreeMap<u16, NodeId>, ShareError> {
        let mut nodes = BTreeMap::new();
        for c in spec.classes() {
            let under = match c.parent {
                Some(p) => nodes.get(&p).copied().unwrap_or(parent),
                None => parent,
            };
            let limit = c.ceil.map(|rate| RateLimit { rate, burst });
            nodes.insert(c.id, self.add_node(under, c.weight, limit)?);
        }
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants() -> Vec<ClassSpec> {
        vec![
            ClassSpec::new(0x10, 1),
            ClassSpec::new(0x11, 1).under(0x10),
            ClassSpec::new(0x12, 3).under(0x10),
            ClassSpec::new(0x20, 3).with_rate(100).with_ceil(500),
        ]
    }

    fn key(key: u32, class: u16) -> LeafKey<u32> {
        LeafKey { key, class }
    }

    #[test]
    fn a_spec_answers_its_shape() {
        let s = ShareSpec::new(
            tenants(),
            vec![key(7, 0x11)],
            Some(0x20),
            SpecLimits::default(),
        )
        .unwrap();
        assert_eq!(s.classes().len(), 4);
        assert!(s.is_leaf(0x11) && !s.is_leaf(0x10));
        assert_eq!((s.depth(0x10), s.depth(0x12)), (1, 2));
        assert_eq!(s.weight_sum(None), 4);
        assert_eq!(s.weight_sum(Some(0x10)), 4);
        let top: Vec<u16> = s.children(None).map(|c| c.id).collect();
        assert_eq!(top, vec![0x10, 0x20]);
        assert_eq!(s.class(0x20).unwrap().ceil, Some(500));
        assert_eq!(s.default_class(), Some(0x20));
    }

    #[test]
    fn a_share_tree_is_built_from_a_spec() {
        use crate::TreeConfig;
        let s = ShareSpec::<u32>::new(tenants(), vec![], None, SpecLimits::default()).unwrap();
        let mut t: ShareTree<u8> = ShareTree::new(TreeConfig::default());
        let nodes = t.add_spec(t.root(), &s, 1000).unwrap();
        assert_eq!(nodes.len(), 4);
        assert_eq!(t.node_count(), 5);
        assert_eq!(t.parent(nodes[&0x12]).unwrap(), Some(nodes[&0x10]));
        assert_eq!(t.weight(nodes[&0x12]).unwrap(), 3);
        let limit = t.rate_limit(nodes[&0x20]).unwrap().unwrap();
        assert_eq!((limit.rate, limit.burst), (500, 1000));
        assert_eq!(t.rate_limit(nodes[&0x10]).unwrap(), None);
    }

    #[test]
    fn faults_are_named() {
        let limits = SpecLimits::default();
        let new = |classes: Vec<ClassSpec>, keys: Vec<LeafKey<u32>>, default| {
            ShareSpec::new(classes, keys, default, limits).unwrap_err()
        };
        assert_eq!(new(vec![], vec![], None), SpecError::Empty);
        let mut dup = tenants();
        dup.push(ClassSpec::new(0x11, 1));
        assert_eq!(
            new(dup, vec![], None),
            SpecError::DuplicateClass { id: 0x11 }
        );
        let orphan = vec![ClassSpec::new(2, 1).under(3), ClassSpec::new(3, 1)];
        assert_eq!(
            new(orphan, vec![], None),
            SpecError::ParentNotBefore { id: 2, parent: 3 }
        );
        let zero = vec![ClassSpec::new(2, 0)];
        assert_eq!(new(zero, vec![], None), SpecError::ZeroWeight { id: 2 });
        let deep: Vec<ClassSpec> = (0..4)
            .map(|i| match i {
                0 => ClassSpec::new(i, 1),
                _ => ClassSpec::new(i, 1).under(i - 1),
            })
            .collect();
        let shallow = SpecLimits {
            max_depth: 3,
            ..limits
        };
        assert_eq!(
            ShareSpec::<u32>::new(deep, vec![], None, shallow).unwrap_err(),
            SpecError::TooDeep { id: 3, limit: 3 }
        );
        assert_eq!(
            new(tenants(), vec![], Some(0x10)),
            SpecError::DefaultNotLeaf { id: 0x10 }
        );
        assert_eq!(
            new(tenants(), vec![], Some(0x99)),
            SpecError::UnknownDefault { id: 0x99 }
        );
        assert_eq!(
            new(tenants(), vec![key(1, 0x11), key(2, 0x10)], None),
            SpecError::KeyNotLeaf { index: 1, id: 0x10 }
        );
        assert_eq!(
            new(tenants(), vec![key(1, 0x99)], None),
            SpecError::KeyUnknownClass { index: 0, id: 0x99 }
        );
        assert_eq!(
            new(tenants(), vec![key(1, 0x11), key(1, 0x12)], None),
            SpecError::DuplicateKey { index: 1 }
        );
    }
}
