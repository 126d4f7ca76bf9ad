//! The kd-PB tree: a k-d tree whose nodes carry an integer pivot (the centroid) and a radius bound
//! (DESIGN §4). Built on plaintext by the data owner; only its *shape* reaches the server.
//!
//! Writer → serializer → reader, tantivy-style: [`TreeBuilder`] builds a [`PlainTree`] in memory
//! (owner only), `blindkd_keys::owner` seals it into the [`crate::index`] body, and the client
//! reads the public [`TreeShape`] plus its sealed radii back.

use serde::{Deserialize, Serialize};

use crate::encoding::{isqrt_ceil, isqrt_floor, squared_distance};

/// The public shape of one class's tree: what the server stores and shows every client of the class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeShape {
    /// Nodes in pre-order; node 0 is the root.
    pub nodes: Vec<ShapeNode>,
    /// Leaves in left-to-right order: `leaves[i]` is the node id of leaf `i`.
    pub leaves: Vec<u32>,
}

/// One node of the public shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShapeNode {
    /// An inner node with two children (node ids).
    Inner {
        /// Left child.
        left: u32,
        /// Right child.
        right: u32,
    },
    /// A leaf: block `leaf` holding `rows` records whose slot ids start at `first_slot`.
    Leaf {
        /// Index into [`TreeShape::leaves`] and the class's leaf blocks.
        leaf: u32,
        /// First slot id (the record's row id in the mask domain).
        first_slot: u64,
        /// Number of records.
        rows: u32,
    },
}

impl TreeShape {
    /// Validates the shape read from untrusted bytes: every child id in range, a real tree rooted at
    /// 0 (each node reached once), leaves listed consistently, and at most `max_rows` per leaf.
    pub fn validate(&self, max_rows: usize) -> Result<(), String> {
        let n = self.nodes.len();
        if n == 0 {
            return Err("empty tree".into());
        }
        let mut seen = vec![false; n];
        let mut stack = vec![0u32];
        let mut leaf_order = Vec::new();
        let mut next_slot = 0u64;
        while let Some(v) = stack.pop() {
            let v = v as usize;
            if v >= n || seen[v] {
                return Err(format!("node {v} out of range or reached twice"));
            }
            seen[v] = true;
            match self.nodes[v] {
                ShapeNode::Inner { left, right } => {
                    stack.push(right);
                    stack.push(left);
                }
                ShapeNode::Leaf {
                    leaf,
                    first_slot,
                    rows,
                } => {
                    if rows == 0 || rows as usize > max_rows {
                        return Err(format!("leaf {leaf} has {rows} rows (1..={max_rows})"));
                    }
                    if first_slot != next_slot {
                        return Err(format!("leaf {leaf} slots are not contiguous"));
                    }
                    next_slot += rows as u64;
                    if leaf as usize != leaf_order.len() {
                        return Err(format!("leaf {leaf} out of order"));
                    }
                    leaf_order.push(v as u32);
                }
            }
        }
        if seen.iter().any(|s| !s) {
            return Err("unreachable nodes".into());
        }
        if leaf_order != self.leaves {
            return Err("leaf list does not match the nodes".into());
        }
        Ok(())
    }

    /// Total records in the tree.
    pub fn records(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| match n {
                ShapeNode::Leaf { rows, .. } => *rows as u64,
                ShapeNode::Inner { .. } => 0,
            })
            .sum()
    }

    /// For every leaf (in leaf order), the node ids from the root down to the leaf.
    pub fn leaf_paths(&self) -> Vec<Vec<u32>> {
        let mut out = vec![Vec::new(); self.leaves.len()];
        let mut stack = vec![(0u32, Vec::<u32>::new())];
        while let Some((v, mut path)) = stack.pop() {
            path.push(v);
            match self.nodes[v as usize] {
                ShapeNode::Inner { left, right } => {
                    stack.push((right, path.clone()));
                    stack.push((left, path));
                }
                ShapeNode::Leaf { leaf, .. } => out[leaf as usize] = path,
            }
        }
        out
    }
}

/// A tree built on plaintext (owner side). `order[slot]` is the input index of the record in slot `slot`.
#[derive(Clone, Debug)]
pub struct PlainTree {
    /// The public shape.
    pub shape: TreeShape,
    /// Pivot (integer centroid) of every node.
    pub pivots: Vec<Vec<i64>>,
    /// Radius bound of every node: `⌈max ‖x − c_v‖_w⌉`.
    pub radii: Vec<u64>,
    /// Slot → input index.
    pub order: Vec<usize>,
}

/// Builds kd-PB trees: widest weighted dimension, split so that every leaf but the last is full,
/// leaves of at most `leaf_size` points.
#[derive(Clone, Debug)]
pub struct TreeBuilder {
    leaf_size: usize,
    weights: Vec<u32>,
}

struct Built {
    nodes: Vec<(ShapeNode, Vec<i64>, u64)>,
}

impl TreeBuilder {
    /// A builder for vectors with these column weights.
    pub fn new(leaf_size: usize, weights: Vec<u32>) -> Self {
        TreeBuilder {
            leaf_size: leaf_size.max(1),
            weights,
        }
    }

    /// Builds the tree over `points` (all of the same dimension as the weights). Parallel (rayon).
    pub fn build(&self, points: &[Vec<i64>]) -> PlainTree {
        let mut idx: Vec<usize> = (0..points.len()).collect();
        let built = self.build_rec(points, &mut idx);
        // Renumber: pre-order node ids, leaves numbered left to right with contiguous slots.
        let mut nodes = Vec::with_capacity(built.nodes.len());
        let mut pivots = Vec::with_capacity(built.nodes.len());
        let mut radii = Vec::with_capacity(built.nodes.len());
        let mut leaves = Vec::new();
        for (n, p, r) in built.nodes {
            if let ShapeNode::Leaf { .. } = n {
                leaves.push(nodes.len() as u32);
            }
            nodes.push(n);
            pivots.push(p);
            radii.push(r);
        }
        PlainTree {
            shape: TreeShape { nodes, leaves },
            pivots,
            radii,
            order: idx,
        }
    }

    /// Recursively builds over `idx` (which it reorders in place). Node ids in the result are
    /// relative pre-order positions; leaf numbers and slots are relative and fixed up by the caller.
    fn build_rec(&self, points: &[Vec<i64>], idx: &mut [usize]) -> Built {
        let (pivot, radius) = self.pivot_and_radius(points, idx);
        if idx.len() <= self.leaf_size {
            return Built {
                nodes: vec![(
                    ShapeNode::Leaf {
                        leaf: 0,
                        first_slot: 0,
                        rows: idx.len() as u32,
                    },
                    pivot,
                    radius,
                )],
            };
        }
        let dim = self.widest_dim(points, idx);
        // Full leaves (issue 12): the left side gets ⌈L/2⌉ leaves' worth of points, where
        // L = ⌈n / leaf_size⌉ is the fewest leaves that hold n. A median split made 2^k leaves:
        // at 10⁷ records and 8191-row blocks, 2 048 leaves 60 % full instead of 1 221 full ones,
        // and every leaf costs a whole block to store and to evaluate. L ≥ 2 here, so
        // 0 < mid < n.
        let leaves = idx.len().div_ceil(self.leaf_size);
        let mid = leaves.div_ceil(2) * self.leaf_size;
        idx.select_nth_unstable_by_key(mid, |&i| points[i][dim]);
        let (lo, hi) = idx.split_at_mut(mid);
        let big = lo.len() > 4096;
        let (l, r) = if big {
            rayon::join(|| self.build_rec(points, lo), || self.build_rec(points, hi))
        } else {
            (self.build_rec(points, lo), self.build_rec(points, hi))
        };
        let left_leaves = l
            .nodes
            .iter()
            .filter(|n| matches!(n.0, ShapeNode::Leaf { .. }))
            .count() as u32;
        let left_len = l.nodes.len() as u32;
        let mut nodes = Vec::with_capacity(1 + l.nodes.len() + r.nodes.len());
        nodes.push((
            ShapeNode::Inner {
                left: 1,
                right: 1 + left_len,
            },
            pivot,
            radius,
        ));
        let shift = |n: ShapeNode, by: u32, leaf_by: u32, slot_by: u64| match n {
            ShapeNode::Inner { left, right } => ShapeNode::Inner {
                left: left + by,
                right: right + by,
            },
            ShapeNode::Leaf {
                leaf,
                first_slot,
                rows,
            } => ShapeNode::Leaf {
                leaf: leaf + leaf_by,
                first_slot: first_slot + slot_by,
                rows,
            },
        };
        nodes.extend(
            l.nodes
                .into_iter()
                .map(|(n, p, rr)| (shift(n, 1, 0, 0), p, rr)),
        );
        nodes.extend(
            r.nodes
                .into_iter()
                .map(|(n, p, rr)| (shift(n, 1 + left_len, left_leaves, mid as u64), p, rr)),
        );
        Built { nodes }
    }

    fn widest_dim(&self, points: &[Vec<i64>], idx: &[usize]) -> usize {
        let d = self.weights.len();
        let mut lo = vec![i64::MAX; d];
        let mut hi = vec![i64::MIN; d];
        for &i in idx {
            for (k, &v) in points[i].iter().enumerate() {
                lo[k] = lo[k].min(v);
                hi[k] = hi[k].max(v);
            }
        }
        (0..d)
            .max_by_key(|&k| {
                let span = (hi[k] - lo[k]) as u128;
                (self.weights[k] as u128 * span * span, std::cmp::Reverse(k))
            })
            .unwrap_or(0)
    }

    fn pivot_and_radius(&self, points: &[Vec<i64>], idx: &[usize]) -> (Vec<i64>, u64) {
        let d = self.weights.len();
        let n = idx.len().max(1) as i128;
        let mut sum = vec![0i128; d];
        for &i in idx {
            for (k, &v) in points[i].iter().enumerate() {
                sum[k] += v as i128;
            }
        }
        // Rounded centroid: any integer point works for correctness; the centroid keeps R small.
        let pivot: Vec<i64> = sum.iter().map(|&s| div_round(s, n) as i64).collect();
        let max_d2 = idx
            .iter()
            .map(|&i| squared_distance(&points[i], &pivot, &self.weights))
            .max()
            .unwrap_or(0);
        (pivot, isqrt_ceil(max_d2) as u64)
    }
}

fn div_round(a: i128, b: i128) -> i128 {
    let q = a.div_euclid(b);
    let r = a.rem_euclid(b);
    if 2 * r >= b {
        q + 1
    } else {
        q
    }
}

/// Conservative pruning: `true` only if every point within `radius` of the pivot (squared pivot
/// distance `d2`) is at squared distance `> threshold` from the query, i.e.
/// `√d2 − R > √threshold`. Checked in integers as `d2 > (R + ⌈√threshold⌉)²`, which implies it.
pub fn prunable(d2: u128, radius: u64, threshold: u128) -> bool {
    let s = (radius as u128).saturating_add(isqrt_ceil(threshold));
    match s.checked_mul(s) {
        Some(bound) => d2 > bound,
        None => false,
    }
}

/// A lower bound on the distance (not squared) from the query to any point of a ball:
/// `max(0, ⌊√d2⌋ − R)`. Used to order leaves.
pub fn lower_bound(d2: u128, radius: u64) -> u128 {
    isqrt_floor(d2).saturating_sub(radius as u128)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shape_is_valid_and_radii_bound_points() {
        let pts: Vec<Vec<i64>> = (0..1000)
            .map(|i| vec![i % 37 - 18, (i * 7) % 101, -(i % 5)])
            .collect();
        let w = vec![1, 2, 1];
        let t = TreeBuilder::new(16, w.clone()).build(&pts);
        t.shape.validate(16).unwrap();
        assert_eq!(t.shape.records(), 1000);
        let mut sorted = t.order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        // Every point lies within the radius of every ancestor.
        for (leaf, path) in t.shape.leaf_paths().iter().enumerate() {
            let ShapeNode::Leaf {
                first_slot, rows, ..
            } = t.shape.nodes[t.shape.leaves[leaf] as usize]
            else {
                panic!()
            };
            for slot in first_slot..first_slot + rows as u64 {
                let p = &pts[t.order[slot as usize]];
                for &v in path {
                    let d2 = squared_distance(p, &t.pivots[v as usize], &w);
                    assert!(d2 <= (t.radii[v as usize] as u128).pow(2));
                }
            }
        }
    }

    #[test]
    fn all_equal_and_single_point() {
        let pts = vec![vec![5i64, 5]; 100];
        let t = TreeBuilder::new(8, vec![1, 1]).build(&pts);
        t.shape.validate(8).unwrap();
        assert!(t.radii.iter().all(|&r| r == 0));
        let t = TreeBuilder::new(8, vec![1]).build(&[vec![-3]]);
        assert_eq!(t.shape.nodes.len(), 1);
    }

    #[test]
    fn validate_rejects_cycles_and_bad_leaves() {
        let bad = TreeShape {
            nodes: vec![ShapeNode::Inner { left: 0, right: 0 }],
            leaves: vec![],
        };
        assert!(bad.validate(10).is_err());
        let bad = TreeShape {
            nodes: vec![ShapeNode::Leaf {
                leaf: 0,
                first_slot: 0,
                rows: 11,
            }],
            leaves: vec![0],
        };
        assert!(bad.validate(10).is_err());
        let bad = TreeShape {
            nodes: vec![ShapeNode::Inner { left: 1, right: 9 }],
            leaves: vec![],
        };
        assert!(bad.validate(10).is_err());
    }

    proptest! {
        #[test]
        fn pruning_is_conservative(p in prop::collection::vec(-1000i64..1000, 2),
                                   c in prop::collection::vec(-1000i64..1000, 2),
                                   q in prop::collection::vec(-1000i64..1000, 2),
                                   slack in 0u64..5, thr in 0u128..5_000_000) {
            let w = [1u32, 1];
            let r = isqrt_ceil(squared_distance(&p, &c, &w)) as u64 + slack;
            let d2 = squared_distance(&q, &c, &w);
            if prunable(d2, r, thr) {
                prop_assert!(squared_distance(&p, &q, &w) > thr);
            }
            let lb = lower_bound(d2, r);
            prop_assert!(lb * lb <= squared_distance(&p, &q, &w));
        }
    }
}
