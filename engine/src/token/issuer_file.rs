//! The issuer `.pub` file: one line per pinned issuer, `<issuer-name> <IssuerPublic>`.
//! Written by the owner (`blindkd keygen`), read by the server (`--issuer`).

use std::str::FromStr;

use super::{IssuerPublic, Issuers};
use crate::{Error, Result};

/// The line for one issuer.
pub fn issuer_line(name: &str, key: &IssuerPublic) -> String {
    format!("{name} {key}\n")
}

/// Parses one or more issuer lines (blank lines and `#` comments ignored) into `into`.
///
/// One text is one issuer's file: several lines of one name are that issuer's current and
/// previous signing keys (rotation). A name that `into` already holds from another file is
/// refused unless the key is one already pinned, so two hospitals that kept the default name
/// cannot silently share (or replace) each other's pins.
pub fn parse_issuer_lines(text: &str, into: &mut Issuers) -> Result<()> {
    let before = into.clone();
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::malformed(
                "issuer file",
                format!("line {}: expected `<name> <key>`", i + 1),
            ));
        };
        let key = IssuerPublic::from_str(key)
            .map_err(|e| Error::malformed("issuer file", format!("line {}: {e}", i + 1)))?;
        // Two hospitals keeping the default name must not silently replace each other's pin.
        let pinned = before.keys_of(name);
        if !pinned.is_empty() && !pinned.contains(&key) {
            return Err(Error::InvalidInput(format!(
                "issuer file line {}: {name:?} is already pinned with another key by another \
                 file; every issuer needs its own name (`blindkd keygen --issuer NAME`)",
                i + 1
            )));
        }
        into.insert(name, key);
        n += 1;
    }
    if n == 0 {
        return Err(Error::malformed("issuer file", "no issuer key in it"));
    }
    Ok(())
}
