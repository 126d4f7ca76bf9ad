//! `blindkd audit verify`: checks the hash chain of a server's audit log (see
//! `blindkd_server::audit`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

/// `audit` subcommands.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check an audit log's hash chain; prints its head to record as an anchor.
    Verify(AuditVerifyArgs),
}

/// `audit verify`.
#[derive(Args, Debug)]
pub struct AuditVerifyArgs {
    /// The audit log (`serve --audit`).
    pub file: PathBuf,
    /// A head recorded earlier (`SEQ:HASH`, as printed by a previous verify or logged by the
    /// server at start and stop): it must still be on the chain.
    #[arg(long, value_parser = parse_head)]
    pub expect_head: Option<(u64, [u8; 32])>,
}

fn parse_head(s: &str) -> Result<(u64, [u8; 32]), String> {
    let (seq, hash) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not SEQ:HASH"))?;
    let seq = seq.parse().map_err(|e| format!("seq `{seq}`: {e}"))?;
    let mut h = [0u8; 32];
    hex::decode_to_slice(hash, &mut h).map_err(|e| format!("hash: {e}"))?;
    Ok((seq, h))
}

pub(crate) fn run(cmd: &AuditCmd) -> anyhow::Result<()> {
    let AuditCmd::Verify(a) = cmd;
    let f =
        std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let v = blindkd_server::audit::verify(std::io::BufReader::new(f), a.expect_head)
        .map_err(|e| anyhow::anyhow!("{}: the audit chain is BROKEN at {e}", a.file.display()))?;
    for (line, lost) in &v.gaps {
        if *lost == 0 {
            eprintln!("WARNING: line {line}: follows a line torn by a crash");
        } else {
            eprintln!("WARNING: line {line}: {lost} audit line(s) before it were not written (disk full or an I/O error)");
        }
    }
    println!(
        "{}: chain intact, {} lines, {} gap(s); head {}:{}",
        a.file.display(),
        v.lines,
        v.gaps.len(),
        v.head.0,
        hex::encode(v.head.1)
    );
    Ok(())
}
