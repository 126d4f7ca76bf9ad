//! `plain`: the same interfaces with no encryption. The oracle in tests and the floor in benchmarks.
//! Never use it for real data: the server sees every vector and every query.

use serde::{Deserialize, Serialize};

use super::{Scheme, SchemeId};
use crate::{Error, Result};

/// Block capacity for `plain`, matching mlhe's packing so trees have the same shape.
pub const PLAIN_BLOCK: usize = 8192;

/// The plain scheme. Stateless.
#[derive(Clone, Debug, Default)]
pub struct Plain {
    capacity: usize,
}

impl Plain {
    /// A plain scheme with the default block capacity.
    pub fn new() -> Self {
        Plain {
            capacity: PLAIN_BLOCK,
        }
    }
}

/// A plain block: the augmented rows themselves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlainBlock {
    /// Augmented rows, each of length `dim + 1`.
    pub rows: Vec<Vec<i64>>,
}

impl Scheme for Plain {
    const ID: SchemeId = SchemeId::Plain;
    type Block = PlainBlock;
    type Prepared = PlainBlock;
    type Query = Vec<i64>;

    fn block_capacity(&self) -> usize {
        self.capacity.max(1)
    }

    fn exact_bound(&self) -> u128 {
        1 << 62
    }

    fn block_rows(&self, block: &PlainBlock) -> usize {
        block.rows.len()
    }

    fn prepare(&self, block: &PlainBlock, dim: usize) -> Result<PlainBlock> {
        if block.rows.len() > self.block_capacity() {
            return Err(Error::malformed(
                "plain block",
                "more rows than the block capacity",
            ));
        }
        if block.rows.iter().any(|r| r.len() != dim + 1) {
            return Err(Error::malformed("plain block", "row length is not dim + 1"));
        }
        Ok(block.clone())
    }

    fn decode_query(&self, bytes: &[u8], dim: usize, _: &super::PkSeed) -> Result<Vec<i64>> {
        let (_, q) = super::unframe_query(bytes)?;
        let w: Vec<i64> =
            postcard::from_bytes(q).map_err(|e| Error::malformed("plain query", e))?;
        if w.len() != dim + 1 {
            return Err(Error::InvalidInput(format!(
                "query has {} coordinates, index needs {}",
                w.len(),
                dim + 1
            )));
        }
        Ok(w)
    }

    fn evaluate(&self, w: &Vec<i64>, block: &PlainBlock) -> Result<Vec<u8>> {
        // i64 × i64 always fits i128, but a sum of up to MAX_DIM + 1 of them need not: index rows and
        // queries come from outside, so overflow is an error, not a panic or a wrong answer.
        let overflow =
            || Error::InvalidInput("inner product overflows: values out of range".into());
        let out = block
            .rows
            .iter()
            .map(|r| {
                r.iter().zip(w).try_fold(0i128, |acc, (&a, &b)| {
                    acc.checked_add(a as i128 * b as i128).ok_or_else(overflow)
                })
            })
            .collect::<Result<Vec<i128>>>()?;
        postcard::to_allocvec(&out).map_err(|e| Error::malformed("plain reply", e))
    }
}
