//! `plain`: no encryption, so no key; its [`ClientScheme`] side only frames rows and queries and
//! reads replies. The oracle in tests and the floor in benchmarks. Never use it for real data.

pub use blindkd_engine::crypto::plain::*;

use super::{ClassKey, ClientScheme, PkSeed, RowRef, Scheme};
use blindkd_engine::encoding::QueryPlan;
use blindkd_engine::{Error, Result};

impl ClientScheme for Plain {
    type Key = ();
    type Session = ();

    fn derive_key(&self, _: &ClassKey, _: &[u8; 16]) -> Result<()> {
        Ok(())
    }

    fn seal_block(&self, _: &(), rows: &[(RowRef, Vec<i64>)]) -> Result<PlainBlock> {
        if rows.len() > self.block_capacity() {
            return Err(Error::InvalidInput("too many rows for one block".into()));
        }
        Ok(PlainBlock {
            rows: rows.iter().map(|(_, r)| r.clone()).collect(),
        })
    }

    fn new_session(&self, _: &PkSeed, _: usize) -> Result<()> {
        Ok(())
    }

    fn session_public(&self, _: &()) -> Result<Vec<u8>> {
        Ok(Vec::new())
    }

    fn seal_query(&self, _: &mut (), w: &[i64]) -> Result<Vec<u8>> {
        postcard::to_allocvec(w).map_err(|e| Error::malformed("plain query", e))
    }

    fn open(
        &self,
        _: &(),
        _: &(),
        reply: &[u8],
        plan: &QueryPlan,
        rows: &[RowRef],
    ) -> Result<Vec<u128>> {
        let ips: Vec<i128> =
            postcard::from_bytes(reply).map_err(|e| Error::malformed("plain reply", e))?;
        if ips.len() != rows.len() {
            return Err(Error::malformed("plain reply", "row count mismatch"));
        }
        ips.iter()
            .map(|&ip| {
                ip.checked_add(plan.q_norm)
                    .and_then(|d| u128::try_from(d).ok())
                    .ok_or_else(|| Error::Crypto("reply does not open to a valid distance".into()))
            })
            .collect()
    }
}
