//! Sealing key bundles to a device.
#![allow(clippy::unwrap_used)]

mod token_common;

use blindkd_engine::Error;
use blindkd_keys::token::{open_sealed, seal_to_device};
use token_common::*;

#[test]
fn round_trip() {
    let device = device_key(7);
    let bundle = b"mask keys and payload keys of cardiology".to_vec();
    let sealed = seal_to_device(&device.public(), &bundle).unwrap();
    assert_eq!(
        open_sealed(&device, &sealed).unwrap().as_slice(),
        bundle.as_slice()
    );
    // Fresh ephemeral key every time.
    assert_ne!(seal_to_device(&device.public(), &bundle).unwrap(), sealed);
    // Empty plaintext is fine.
    let empty = seal_to_device(&device.public(), &[]).unwrap();
    assert!(open_sealed(&device, &empty).unwrap().is_empty());
}

#[test]
fn wrong_device_key_is_refused() {
    let sealed = seal_to_device(&device_key(7).public(), b"secret bundle").unwrap();
    assert!(matches!(
        open_sealed(&device_key(8), &sealed),
        Err(Error::Crypto(_))
    ));
}

#[test]
fn every_flipped_byte_is_refused() {
    let device = device_key(7);
    let sealed = seal_to_device(&device.public(), b"secret bundle").unwrap();
    for i in 0..sealed.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = sealed.clone();
            bad[i] ^= bit;
            assert!(open_sealed(&device, &bad).is_err(), "byte {i} bit {bit:#x}");
        }
    }
    for len in 0..sealed.len() {
        assert!(
            open_sealed(&device, &sealed[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(open_sealed(&device, &longer).is_err());
}

#[test]
fn low_order_recipient_is_refused() {
    let mut public = device_key(7).public();
    public.x25519 = [0; 32];
    assert!(seal_to_device(&public, b"x").is_err());
}
