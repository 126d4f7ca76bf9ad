//! Random and mutated input to every decoder of untrusted bytes: errors, never panics.
#![allow(clippy::unwrap_used)]

mod token_common;

use std::io::Cursor;

use blindkd_keys::token::{
    decode_unverified, open_sealed, render_qr_png, scan_qr, seal_to_device, verify, verify_pop,
};
use image::{DynamicImage, GrayImage, ImageFormat, Luma};
use proptest::prelude::*;
use token_common::*;

const BASE45: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";

fn check_token(text: &str) {
    let (_, _, issuers) = fixture();
    let _ = decode_unverified(text);
    let _ = verify(text, &issuers, NOW, AUD);
    let _ = verify_pop(&[7; 32], &[1; 32], text, &[0; 64]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_strings(text in ".{0,600}") {
        check_token(&text);
        check_token(&format!("BKD1:{text}"));
    }

    #[test]
    fn random_base45(chars in proptest::collection::vec(0..45usize, 0..600)) {
        let text: String = chars.iter().map(|&i| BASE45[i] as char).collect();
        check_token(&format!("BKD1:{text}"));
    }

    #[test]
    fn random_cbor_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_token(&token_text(&bytes));
    }

    #[test]
    fn mutated_tokens(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let (token, _, issuers) = fixture();
        let mut bytes = token_bytes(&token);
        for (at, value) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        let mutated = token_text(&bytes);
        let _ = decode_unverified(&mutated);
        // A mutated token never verifies unless the mutation was a no-op.
        if mutated != token {
            prop_assert!(verify(&mutated, &issuers, NOW, AUD).is_err());
        }
        // Truncations of the CBOR.
        let cut = edits[0].0.index(bytes.len());
        check_token(&token_text(&bytes[..cut]));
    }

    #[test]
    fn random_sealed(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let device = device_key(7);
        prop_assert!(open_sealed(&device, &bytes).is_err());
        let mut with_header = b"BKDSEAL\x01".to_vec();
        with_header.extend_from_slice(&bytes);
        prop_assert!(open_sealed(&device, &with_header).is_err());
    }

    #[test]
    fn mutated_sealed(at in any::<prop::sample::Index>(), value in any::<u8>()) {
        let device = device_key(7);
        let sealed = seal_to_device(&device.public(), b"bundle").unwrap();
        let mut bad = sealed.clone();
        let i = at.index(bad.len());
        bad[i] = value;
        let result = open_sealed(&device, &bad);
        prop_assert_eq!(result.is_ok(), bad == sealed);
    }

    #[test]
    fn random_image_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = scan_qr(&bytes);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&bytes);
        let _ = scan_qr(&png);
        let mut jpeg = vec![0xff, 0xd8, 0xff];
        jpeg.extend_from_slice(&bytes);
        let _ = scan_qr(&jpeg);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Noise over a real QR code, and pure noise images, through the detector and decoder.
    #[test]
    fn noisy_images(seed in any::<u64>(), density in 0u32..40, side in 8u32..160) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (token, _, _) = fixture();
        let mut img = image::load_from_memory(&render_qr_png(&token, 2).unwrap()).unwrap().into_luma8();
        for p in img.pixels_mut() {
            if rng.random_range(0..100) < density {
                *p = Luma([rng.random()]);
            }
        }
        let noise = GrayImage::from_fn(side, side, |_, _| Luma([if rng.random::<bool>() { 0 } else { 255 }]));
        for img in [img, noise] {
            let mut bytes = Vec::new();
            DynamicImage::ImageLuma8(img).write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png).unwrap();
            let _ = scan_qr(&bytes);
            // Corrupt the file itself too.
            let i = (seed as usize) % bytes.len();
            bytes[i] ^= 0x5a;
            let _ = scan_qr(&bytes);
        }
    }
}
