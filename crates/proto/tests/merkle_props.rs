//! Property tests of the Merkle streams (RFC 9162): for random streams and random
//! checkpoints (sizes), every inclusion and consistency proof verifies, proofs are
//! O(log n), and any single-bit change to a proof — a path hash, the leaf index, the leaf,
//! or the root it is checked against — makes it fail. (Tree sizes are not part of a proof:
//! they come from the signed checkpoint with the root, and `InclusionProof::verify` refuses a
//! proof whose size differs from the checkpoint's.)

use detente_proto::merkle::{
    leaf_hash, root_of_leaves, verify_consistency, verify_inclusion, Frontier, MemoryTree,
};
use proptest::prelude::*;

fn tree_of(n: usize, salt: u64) -> (Vec<[u8; 32]>, MemoryTree) {
    let leaves: Vec<[u8; 32]> = (0..n as u64)
        .map(|i| leaf_hash(&[salt.to_be_bytes(), i.to_be_bytes()].concat()))
        .collect();
    let mut tree = MemoryTree::new();
    for l in &leaves {
        tree.push(*l);
    }
    (leaves, tree)
}

fn flip(h: &[u8; 32], bit: usize) -> [u8; 32] {
    let mut h = *h;
    h[bit / 8 % 32] ^= 1 << (bit % 8);
    h
}

fn ceil_log2(n: u64) -> usize {
    (64 - (n.max(1) - 1).leading_zeros()) as usize
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn inclusion_proofs_verify_and_any_bit_flip_fails(
        n in 1usize..300,
        salt in any::<u64>(),
        pick in any::<u64>(),
        size_pick in any::<u64>(),
        bit in 0usize..256,
        which in any::<u64>(),
    ) {
        let (leaves, tree) = tree_of(n, salt);
        let size = 1 + size_pick % n as u64;
        let index = pick % size;
        let root = tree.root_at(size).unwrap();
        prop_assert_eq!(root, root_of_leaves(&leaves[..size as usize]));
        let path = tree.inclusion_proof(index, size).unwrap();
        prop_assert!(path.len() <= ceil_log2(size));
        let leaf = leaves[index as usize];
        prop_assert!(verify_inclusion(index, size, &leaf, &path, &root));

        // A flipped bit in one path hash.
        if !path.is_empty() {
            let mut bad = path.clone();
            let i = (which % path.len() as u64) as usize;
            bad[i] = flip(&bad[i], bit);
            prop_assert!(!verify_inclusion(index, size, &leaf, &bad, &root));
        }
        // In the leaf or the root.
        prop_assert!(!verify_inclusion(index, size, &flip(&leaf, bit), &path, &root));
        prop_assert!(!verify_inclusion(index, size, &leaf, &path, &flip(&root, bit)));
        // In the leaf index (any of its 64 bits).
        let b = (bit % 64) as u32;
        prop_assert!(!verify_inclusion(index ^ (1 << b), size, &leaf, &path, &root));
        // A dropped or an extra hash.
        if !path.is_empty() {
            prop_assert!(!verify_inclusion(index, size, &leaf, &path[..path.len() - 1], &root));
        }
        let mut longer = path.clone();
        longer.push(leaf);
        prop_assert!(!verify_inclusion(index, size, &leaf, &longer, &root));
    }

    #[test]
    fn consistency_proofs_verify_and_any_bit_flip_fails(
        n in 1usize..300,
        salt in any::<u64>(),
        a in any::<u64>(),
        b in any::<u64>(),
        bit in 0usize..256,
        which in any::<u64>(),
    ) {
        let (_, tree) = tree_of(n, salt);
        let x = 1 + a % n as u64;
        let y = 1 + b % n as u64;
        let (old, new) = (x.min(y), x.max(y));
        let old_root = tree.root_at(old).unwrap();
        let new_root = tree.root_at(new).unwrap();
        let path = tree.consistency_proof(old, new).unwrap();
        prop_assert!(path.len() <= 2 * ceil_log2(new) + 1);
        prop_assert!(verify_consistency(old, new, &old_root, &new_root, &path));

        if !path.is_empty() {
            let mut bad = path.clone();
            let i = (which % path.len() as u64) as usize;
            bad[i] = flip(&bad[i], bit);
            prop_assert!(!verify_consistency(old, new, &old_root, &new_root, &bad));
        }
        prop_assert!(!verify_consistency(old, new, &flip(&old_root, bit), &new_root, &path));
        prop_assert!(!verify_consistency(old, new, &old_root, &flip(&new_root, bit), &path));
        // A dropped hash.
        if !path.is_empty() {
            prop_assert!(!verify_consistency(old, new, &old_root, &new_root, &path[..path.len() - 1]));
        }
    }

    #[test]
    fn a_different_stream_is_never_consistent(
        n in 2usize..200,
        salt in any::<u64>(),
        cut in any::<u64>(),
        changed in any::<u64>(),
    ) {
        // Two streams that agree up to `old` except one changed leaf: no path proves the
        // old tree a prefix of the new one.
        let (leaves, tree) = tree_of(n, salt);
        let new = n as u64;
        let old = 1 + cut % (new - 1);
        let mut other = leaves.clone();
        let i = (changed % old) as usize;
        other[i] = flip(&other[i], 0);
        let forged_old = root_of_leaves(&other[..old as usize]);
        let path = tree.consistency_proof(old, new).unwrap();
        prop_assert!(!verify_consistency(old, new, &forged_old, &tree.root(), &path));
    }

    #[test]
    fn frontier_is_the_tree(n in 0usize..600, salt in any::<u64>()) {
        let (leaves, tree) = tree_of(n, salt);
        let mut f = Frontier::default();
        let mut created = Vec::new();
        for l in &leaves {
            f.push(*l, &mut created);
        }
        prop_assert_eq!(f.root(), root_of_leaves(&leaves));
        prop_assert_eq!(f.root(), tree.root());
        // Every leaf makes one node plus one per trailing one-bit of its index: < 2 per leaf.
        prop_assert!(created.len() <= 2 * n);
    }
}
