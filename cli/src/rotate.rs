//! `blindkd rotate signing-key`: the hospital starts signing tokens, bundles and revocation lists
//! with a fresh key. The previous key's public half stays in `<key>.pub`, so servers and devices
//! that pin the new file keep accepting what the old key signed until it expires; then
//! `--drop-previous` removes it. The owner key records when each key retired.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use blindkd_keys::owner::OwnerKey;

/// `rotate` subcommands.
#[derive(Subcommand, Debug)]
pub enum RotateCmd {
    /// Start signing with a fresh key (or, with --drop-previous, forget the previous ones).
    SigningKey(RotateSigningArgs),
}

/// `rotate signing-key`.
#[derive(Args, Debug)]
pub struct RotateSigningArgs {
    /// Owner key.
    #[arg(long)]
    pub key: PathBuf,
    /// Remove the previous keys from the issuer file (once every token and bundle they signed
    /// has expired or been reissued). No new key is made.
    #[arg(long)]
    pub drop_previous: bool,
}

pub(crate) fn run(cmd: &RotateCmd) -> anyhow::Result<()> {
    let RotateCmd::SigningKey(a) = cmd;
    let mut owner = OwnerKey::load(&a.key)?;
    if a.drop_previous {
        let n = owner.drop_previous_signing_keys();
        let pubp = crate::save_owner_key(&owner, &a.key)?;
        println!(
            "dropped {n} previous signing key(s); {} now pins only the current key: give it to \
             the query servers and devices (tokens signed before the rotation stop working there)",
            pubp.display()
        );
        return Ok(());
    }
    owner.rotate_signing_key(crate::now_unix());
    let pubp = crate::save_owner_key(&owner, &a.key)?;
    println!(
        "new signing key; {} pins it and the previous one(s): give it to the query servers \
         (--issuer) and doctors' devices (query --issuer)",
        pubp.display()
    );
    for p in owner.previous_signing_keys() {
        println!("  previous key {} retired at {}", p.public, p.retired_at);
    }
    println!(
        "tokens, bundles and revocation lists are signed with the new key from now on; run \
         `blindkd rotate signing-key --drop-previous` once the old tokens have expired"
    );
    Ok(())
}
