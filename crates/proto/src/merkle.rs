//! Merkle trees over sender streams, with RFC 9162 (Certificate Transparency v2) hashing.
//!
//! Leaf `i` of a stream's tree is the envelope with `seq = i + 1`:
//! `leaf = SHA-256(0x00 ‖ envelope bytes)`, `node = SHA-256(0x01 ‖ left ‖ right)`, and the
//! root of the empty tree is `SHA-256("")` (RFC 9162 §2.1.1).
//!
//! A **complete subtree** `(level, index)` covers leaves `index·2^level .. (index+1)·2^level`.
//! Once a tree has grown past it, its hash never changes, so a store keeps every complete
//! subtree hash it has seen and answers any proof with O(log n) lookups ([`subtree_root`],
//! [`inclusion_proof`], [`consistency_proof`]). A [`Frontier`] (the complete subtrees whose
//! sizes are the bits of the tree size) is all that is needed to append and to compute the
//! root, and appending reports the complete subtrees it creates.
//!
//! Verification follows RFC 9162 §2.1.3.2 and §2.1.4.2 exactly.

use sha2::{Digest, Sha256};

/// A SHA-256 value.
pub type Hash = [u8; 32];

/// Largest tree size this module accepts (2^48 leaves): far above any stream's bound and
/// small enough that every index arithmetic stays exact.
pub const TREE_SIZE_MAX: u64 = 1 << 48;

/// Longest inclusion or consistency proof for a tree of [`TREE_SIZE_MAX`] leaves.
pub const PROOF_HASHES_MAX: usize = 2 * 48 + 2;

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The root of a list of leaf hashes, straight from the RFC 9162 definition (MTH). Linear
/// time; for tests, vectors and the offline verifier's reference path.
pub fn root_of_leaves(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root_of_leaves(&leaves[..k]), &root_of_leaves(&leaves[k..]))
        }
    }
}

/// The compact state of a tree: its size and the roots of the complete subtrees whose sizes
/// are the set bits of the size, largest (leftmost) first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

/// A complete subtree created by an append: `(level, index, hash)`.
pub type NewNode = (u8, u64, Hash);

impl Frontier {
    pub const EMPTY: Frontier = Frontier {
        size: 0,
        nodes: Vec::new(),
    };

    /// The `(level, index)` of each frontier subtree of a tree of `size` leaves, leftmost
    /// first: what a store reads to rebuild a frontier.
    pub fn positions(size: u64) -> Vec<(u8, u64)> {
        (0..64u8)
            .rev()
            .filter(|l| size >> l & 1 == 1)
            .map(|l| (l, (size >> l) - 1))
            .collect()
    }

    /// Rebuild from a size and the hashes at [`Frontier::positions`]; `None` if the count
    /// does not match or the size is beyond [`TREE_SIZE_MAX`].
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Frontier> {
        (size <= TREE_SIZE_MAX && nodes.len() == size.count_ones() as usize)
            .then_some(Frontier { size, nodes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Append one leaf hash; push every complete subtree this creates (the leaf itself at
    /// level 0, then each parent it completes) onto `created`.
    pub fn push(&mut self, leaf: Hash, created: &mut Vec<NewNode>) {
        let mut hash = leaf;
        let mut level = 0u8;
        let mut index = self.size;
        created.push((level, index, hash));
        while self.size >> level & 1 == 1 {
            let left = self.nodes.pop().expect("a set bit has its frontier node");
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            created.push((level, index, hash));
        }
        self.nodes.push(hash);
        self.size += 1;
    }

    /// The root (MTH) of the tree.
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some(last) = iter.next() else {
            return empty_root();
        };
        iter.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// The root of leaves `start..end` (non-empty, `start` a multiple of the largest power of
/// two not below `end - start`, as every range in RFC 9162 proofs is), from complete subtree
/// hashes: `get(level, index)`. Reads at most one node per bit of `end - start`.
pub fn subtree_root<E>(
    start: u64,
    end: u64,
    get: &mut impl FnMut(u8, u64) -> Result<Hash, E>,
) -> Result<Hash, E> {
    debug_assert!(end > start);
    let n = end - start;
    if n.is_power_of_two() && start & (n - 1) == 0 {
        let level = n.trailing_zeros() as u8;
        return get(level, start >> level);
    }
    let k = split_point(n);
    let left = subtree_root(start, start + k, get)?;
    let right = subtree_root(start + k, end, get)?;
    Ok(node_hash(&left, &right))
}

/// The root of the first `size` leaves of a tree whose complete subtrees `get` knows.
pub fn root_at<E>(size: u64, get: &mut impl FnMut(u8, u64) -> Result<Hash, E>) -> Result<Hash, E> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree_root(0, size, get)
}

/// Why a proof cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError<E> {
    #[error("index {index} is not below tree size {size}")]
    OutOfRange { index: u64, size: u64 },
    #[error("tree size {0} is beyond the limit")]
    TooLarge(u64),
    #[error("{0}")]
    Lookup(E),
}

/// RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of `size` leaves,
/// innermost sibling first.
pub fn inclusion_proof<E>(
    index: u64,
    size: u64,
    get: &mut impl FnMut(u8, u64) -> Result<Hash, E>,
) -> Result<Vec<Hash>, ProofError<E>> {
    if size > TREE_SIZE_MAX {
        return Err(ProofError::TooLarge(size));
    }
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    let mut path = Vec::new();
    let (mut start, mut end) = (0u64, size);
    // Walk from the root down, collecting siblings outermost first, then reverse.
    while end - start > 1 {
        let k = split_point(end - start);
        if index < start + k {
            path.push(subtree_root(start + k, end, get).map_err(ProofError::Lookup)?);
            end = start + k;
        } else {
            path.push(subtree_root(start, start + k, get).map_err(ProofError::Lookup)?);
            start += k;
        }
    }
    path.reverse();
    Ok(path)
}

/// RFC 9162 §2.1.4.1 consistency proof that the tree of `old` leaves is a prefix of the
/// tree of `new` leaves (`0 < old ≤ new`; empty when equal).
pub fn consistency_proof<E>(
    old: u64,
    new: u64,
    get: &mut impl FnMut(u8, u64) -> Result<Hash, E>,
) -> Result<Vec<Hash>, ProofError<E>> {
    if new > TREE_SIZE_MAX {
        return Err(ProofError::TooLarge(new));
    }
    if old == 0 || old > new {
        return Err(ProofError::OutOfRange {
            index: old,
            size: new,
        });
    }
    let mut path = Vec::new();
    // SUBPROOF(m, D[start:end], b), iteratively: each step appends one node.
    let (mut m, mut start, mut end, mut whole) = (old, 0u64, new, true);
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                path.push(subtree_root(start, end, get).map_err(ProofError::Lookup)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            path.push(subtree_root(start + k, end, get).map_err(ProofError::Lookup)?);
            end = start + k;
        } else {
            path.push(subtree_root(start, start + k, get).map_err(ProofError::Lookup)?);
            m -= k;
            start += k;
            whole = false;
        }
    }
    // SUBPROOF appends the recursive part first; we walked outside in.
    path.reverse();
    Ok(path)
}

/// RFC 9162 §2.1.3.2: does `path` prove that `leaf` is leaf `index` of the tree of `size`
/// leaves with root `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, path: &[Hash], root: &Hash) -> bool {
    if index >= size || size > TREE_SIZE_MAX || path.len() > PROOF_HASHES_MAX {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == root
}

/// RFC 9162 §2.1.4.2: does `path` prove that the tree of `old` leaves with root `old_root`
/// is a prefix of the tree of `new` leaves with root `new_root`? Equal sizes need an empty
/// path and equal roots; an empty old tree is a prefix of anything (empty path, root
/// `SHA-256("")`).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    path: &[Hash],
) -> bool {
    if old > new || new > TREE_SIZE_MAX || path.len() > PROOF_HASHES_MAX {
        return false;
    }
    if old == 0 {
        return path.is_empty() && *old_root == empty_root();
    }
    if old == new {
        return path.is_empty() && old_root == new_root;
    }
    let mut nodes: Vec<Hash> = Vec::with_capacity(path.len() + 1);
    if old.is_power_of_two() {
        nodes.push(*old_root);
    }
    nodes.extend_from_slice(path);
    let Some((first, rest)) = nodes.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    &fr == old_root && &sr == new_root && snode == 0
}

/// A tree held fully in memory: every complete subtree, for tests and the offline verifier.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    frontier: Frontier,
    /// `levels[l][i]` is complete subtree `(l, i)`.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut created = Vec::new();
        self.frontier.push(leaf, &mut created);
        for (level, index, hash) in created {
            let level = usize::from(level);
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            debug_assert_eq!(self.levels[level].len() as u64, index);
            self.levels[level].push(hash);
        }
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Complete subtree `(level, index)`, if the tree has grown past it.
    pub fn node(&self, level: u8, index: u64) -> Option<Hash> {
        let i = usize::try_from(index).ok()?;
        self.levels.get(usize::from(level))?.get(i).copied()
    }

    fn getter(&self) -> impl FnMut(u8, u64) -> Result<Hash, MissingNode> + '_ {
        |level, index| self.node(level, index).ok_or(MissingNode { level, index })
    }

    /// Root of the first `size` leaves (`size ≤ self.size()`).
    pub fn root_at(&self, size: u64) -> Result<Hash, MissingNode> {
        root_at(size, &mut self.getter())
    }

    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
    ) -> Result<Vec<Hash>, ProofError<MissingNode>> {
        inclusion_proof(index, size, &mut self.getter())
    }

    pub fn consistency_proof(
        &self,
        old: u64,
        new: u64,
    ) -> Result<Vec<Hash>, ProofError<MissingNode>> {
        consistency_proof(old, new, &mut self.getter())
    }
}

/// A complete subtree a proof needed was not there (the tree is smaller than asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no complete subtree at level {level}, index {index}")]
pub struct MissingNode {
    pub level: u8,
    pub index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn frontier_root_matches_definition() {
        let all = leaves(70);
        let mut tree = MemoryTree::new();
        assert_eq!(tree.root(), empty_root());
        for (i, leaf) in all.iter().enumerate() {
            tree.push(*leaf);
            assert_eq!(tree.root(), root_of_leaves(&all[..=i]));
            for size in 1..=tree.size() {
                assert_eq!(
                    tree.root_at(size).unwrap(),
                    root_of_leaves(&all[..size as usize])
                );
            }
        }
    }

    #[test]
    fn frontier_rebuilds_from_positions() {
        let mut tree = MemoryTree::new();
        for leaf in leaves(45) {
            tree.push(leaf);
            let size = tree.size();
            let nodes = Frontier::positions(size)
                .into_iter()
                .map(|(l, i)| tree.node(l, i).unwrap())
                .collect();
            let f = Frontier::from_parts(size, nodes).unwrap();
            assert_eq!(f.root(), tree.root());
        }
    }

    #[test]
    fn proofs_verify_for_small_trees() {
        let all = leaves(40);
        let mut tree = MemoryTree::new();
        for leaf in &all {
            tree.push(*leaf);
        }
        for size in 1..=40u64 {
            let root = tree.root_at(size).unwrap();
            for index in 0..size {
                let p = tree.inclusion_proof(index, size).unwrap();
                assert!(verify_inclusion(
                    index,
                    size,
                    &all[index as usize],
                    &p,
                    &root
                ));
                assert!(!verify_inclusion(
                    index,
                    size,
                    &all[(index as usize + 1) % 40],
                    &p,
                    &root
                ));
            }
            for old in 1..=size {
                let p = tree.consistency_proof(old, size).unwrap();
                let old_root = tree.root_at(old).unwrap();
                assert!(
                    verify_consistency(old, size, &old_root, &root, &p),
                    "{old} {size}"
                );
            }
        }
    }
}
