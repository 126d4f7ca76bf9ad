//! Replays the fuzz corpus (`fuzz/corpus/<target>/`), the kept crash reproducers
//! (`fuzz/regressions/<target>/`) and any local crash artifacts (`fuzz/artifacts/<target>/`)
//! through the very harness the cargo-fuzz targets run (`fuzz/src/harness.rs`), so CI exercises
//! every fuzz input without cargo-fuzz or a nightly toolchain.
//!
//! Regenerate the seed corpus (deterministic) with
//! `cargo test -p blindkd-keys --test fuzz_regressions -- --ignored generate_seed_corpus`.
#![allow(clippy::unwrap_used, unreachable_pub, dead_code)]

#[path = "../../fuzz/src/harness.rs"]
mod harness;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use blindkd_keys::protocol::{BlockRef, BlockRequest, QueryKind, StartRequest};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

fn replay(target: &str) -> usize {
    let f = harness::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .unwrap()
        .1;
    let mut n = 0;
    for sub in ["corpus", "regressions", "artifacts"] {
        for p in files(&fuzz_dir().join(sub).join(target)) {
            let data = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{target}: {} panicked", p.display());
            n += 1;
        }
    }
    n
}

#[test]
fn every_target_has_a_seed_corpus() {
    for (t, _) in harness::TARGETS {
        let n = files(&fuzz_dir().join("corpus").join(t)).len();
        assert!(n >= 5, "fuzz/corpus/{t} has {n} files");
    }
}

#[test]
fn replay_token() {
    assert!(replay("token") > 0);
}

#[test]
fn replay_qr() {
    assert!(replay("qr") > 0);
}

#[test]
fn replay_qr_image() {
    assert!(replay("qr_image") > 0);
}

#[test]
fn replay_qr_payload() {
    assert!(replay("qr_payload") > 0);
}

#[test]
fn replay_index_file() {
    assert!(replay("index_file") > 0);
}

#[test]
fn replay_start_request() {
    assert!(replay("start_request") > 0);
}

#[test]
fn replay_block_request() {
    assert!(replay("block_request") > 0);
}

#[test]
fn replay_mlhe_query() {
    assert!(replay("mlhe_query") > 0);
}

#[test]
fn fixture_token_and_requests_are_accepted() {
    // The seeds exercise the success paths: check the harness fixtures really are valid.
    let t = harness::valid_token();
    let c =
        blindkd_keys::token::verify(&t, harness::issuers(), harness::NOW, harness::AUD).unwrap();
    assert_eq!(c, harness::claims());
    let req = harness::plain_start_request(QueryKind::Knn { k: 3 }, vec![], &[1, 2, 3, 4, 1]);
    assert!(harness::hosted_plain()
        .start(
            &harness::access(),
            &req,
            &mut blindkd_keys::protocol::Unmetered
        )
        .is_ok());
    for seed in ["m0-token-png", "m0-token-jpeg"] {
        let img = std::fs::read(fuzz_dir().join("corpus/qr/seed-".to_owned() + seed)).unwrap();
        assert_eq!(
            blindkd_keys::token::scan_qr(&img[1..]).unwrap(),
            t,
            "{seed}"
        );
    }
    // The bitmap and module seeds must scan without rescaling, or the fuzzer never reaches
    // the payload; Reed–Solomon corrects the damaged module seed.
    for seed in ["m1-token-png", "m2-token", "m3-token"] {
        let data = std::fs::read(fuzz_dir().join("corpus/qr/seed-".to_owned() + seed)).unwrap();
        assert_eq!(harness::qr_scan(&data).unwrap().unwrap(), t, "{seed}");
    }
    for seed in ["token", "token-damaged"] {
        let path = fuzz_dir().join("corpus/qr_payload/seed-".to_owned() + seed);
        let data = std::fs::read(path).unwrap();
        assert_eq!(
            harness::qr_payload_scan(&data).unwrap().unwrap(),
            t,
            "{seed}"
        );
    }
    for f in files(&fuzz_dir().join("corpus/index_file")) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seed-m0-plain") || name.starts_with("seed-m1-") {
            let data = std::fs::read(&f).unwrap();
            blindkd_keys::protocol::open_index_bytes(
                &data[1..],
                Path::new("x"),
                &blindkd_engine::index::LoadLimits::default(),
            )
            .unwrap();
        }
    }
}

/// Dark pixels of a grayscale render, row by row.
fn dark(gray: &image::GrayImage) -> Vec<bool> {
    gray.as_raw().iter().map(|&p| p < 128).collect()
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

fn sections(file: &[u8]) -> (&[u8], &[u8]) {
    let hlen = u32::from_le_bytes(file[12..16].try_into().unwrap()) as usize;
    let hend = 16 + hlen;
    (&file[16..hend], &file[hend + 8..file.len() - 40])
}

/// Writes the deterministic seed corpus. Run by hand (see the module docs).
#[test]
#[ignore]
fn generate_seed_corpus() {
    // token: mode 0 = text, mode 1 = CBOR bytes (Base45-encoded by the harness).
    let token = harness::valid_token();
    let cbor = base45::decode(token.strip_prefix("BKD1:").unwrap()).unwrap();
    write("token", "valid-text", &with_mode(0, token.as_bytes()));
    write("token", "valid-cbor", &with_mode(1, &cbor));
    write(
        "token",
        "valid-text-whitespace",
        &with_mode(0, format!("  {token}\n").as_bytes()),
    );
    write(
        "token",
        "lowercase",
        &with_mode(0, token.to_lowercase().as_bytes()),
    );
    write("token", "prefix-only", &with_mode(0, b"BKD1:"));
    write("token", "empty", &[]);
    write("token", "bad-base45", &with_mode(0, b"BKD1:::::~~~"));
    write(
        "token",
        "wrong-prefix",
        &with_mode(0, b"BKD2:6BFOXN*TS0BI$ZD"),
    );
    for cut in [1, 10, 40, cbor.len() / 2, cbor.len() - 1] {
        write(
            "token",
            &format!("cbor-cut-{cut}"),
            &with_mode(1, &cbor[..cut]),
        );
    }
    for at in [0, 3, 20, 60, cbor.len() - 10] {
        let mut m = cbor.clone();
        m[at] ^= 0x55;
        write("token", &format!("cbor-flip-{at}"), &with_mode(1, &m));
    }
    // CBOR oddities: huge declared lengths, deep nesting, indefinite lengths.
    write(
        "token",
        "cbor-huge-bstr",
        &with_mode(
            1,
            &[
                0xd2, 0x84, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
        ),
    );
    write("token", "cbor-deep", &with_mode(1, &[0x81; 200]));
    write(
        "token",
        "cbor-indefinite",
        &with_mode(1, &[0xd2, 0x9f, 0x5f, 0x41, 0x00, 0xff, 0xff]),
    );
    write("token", "cbor-tag-only", &with_mode(1, &[0xd2]));

    // qr (mode byte first, see the harness): a real token QR (PNG and JPEG), a non-token QR,
    // tiny and broken images, and the token as 8-bit and 1-bit bitmaps.
    let png = blindkd_keys::token::render_qr_png(&token, 2).unwrap();
    let img = image::load_from_memory(&png).unwrap();
    let mut jpeg = Vec::new();
    img.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let hello = blindkd_keys::token::render_qr_png("HELLO WORLD", 3).unwrap();
    let small = blindkd_keys::token::render_qr_png("BKD1:ABC", 1).unwrap();
    let mut blank = Vec::new();
    image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(40, 40, image::Luma([255])))
        .write_to(&mut Cursor::new(&mut blank), image::ImageFormat::Png)
        .unwrap();
    let mut one = Vec::new();
    image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(1, 1, image::Luma([0])))
        .write_to(&mut Cursor::new(&mut one), image::ImageFormat::Png)
        .unwrap();
    for (mode, tag) in [(0u8, "m0"), (1, "m1")] {
        write("qr", &format!("{tag}-token-png"), &with_mode(mode, &png));
        write("qr", &format!("{tag}-token-jpeg"), &with_mode(mode, &jpeg));
        write("qr", &format!("{tag}-hello-png"), &with_mode(mode, &hello));
        write(
            "qr",
            &format!("{tag}-short-token-png"),
            &with_mode(mode, &small),
        );
        write(
            "qr",
            &format!("{tag}-png-truncated"),
            &with_mode(mode, &png[..png.len() / 2]),
        );
        write("qr", &format!("{tag}-blank-png"), &with_mode(mode, &blank));
        write(
            "qr",
            &format!("{tag}-one-pixel-png"),
            &with_mode(mode, &one),
        );
    }
    // qr_image: the same files without a mode byte.
    for (name, file) in [
        ("token-png", &png[..]),
        ("token-jpeg", &jpeg[..]),
        ("hello-png", &hello[..]),
        ("blank-png", &blank[..]),
        ("one-pixel-png", &one[..]),
        ("png-truncated", &png[..png.len() / 2]),
        ("png-header-only", &png[..33]),
    ] {
        write("qr_image", name, file);
    }
    write("qr", "m0-png-header-only", &with_mode(0, &png[..33]));
    write("qr", "m0-not-an-image", &with_mode(0, b"GIF89a not really"));
    for (text, px, name) in [(token.as_str(), 2, "token"), ("BKD1:ABC", 3, "short-token")] {
        let gray = image::load_from_memory(&blindkd_keys::token::render_qr_png(text, px).unwrap())
            .unwrap()
            .into_luma8();
        let w = u8::try_from(gray.width()).unwrap();
        write(
            "qr",
            &format!("m2-{name}"),
            &[&[2, w][..], gray.as_raw()].concat(),
        );
        let bits = [&[3, w][..], &harness::pack_bits(&dark(&gray))].concat();
        write("qr", &format!("m3-{name}"), &bits);
    }
    write("qr", "m3-empty", &[3, 0]);

    // qr_payload: module matrices (quiet zone cut off a 1-pixel-per-module render) of the
    // token, of a short token and of a non-token QR; one with a damaged codeword.
    for (text, name) in [
        (token.as_str(), "token"),
        ("BKD1:ABC", "short-token"),
        ("HELLO WORLD", "hello"),
    ] {
        let gray = image::load_from_memory(&blindkd_keys::token::render_qr_png(text, 1).unwrap())
            .unwrap()
            .into_luma8();
        let size = gray.width() - 8;
        let inner = image::imageops::crop_imm(&gray, 4, 4, size, size).to_image();
        let version = u8::try_from((size - 17) / 4).unwrap();
        let bits = [&[version - 1][..], &harness::pack_bits(&dark(&inner))].concat();
        write("qr_payload", name, &bits);
        if name == "token" {
            let mut damaged = bits.clone();
            damaged[bits.len() / 2] ^= 0xff;
            write("qr_payload", "token-damaged", &damaged);
        }
    }
    write("qr_payload", "empty", &[]);
    write("qr_payload", "v40-blank", &[39]);

    // index_file: see the harness for the modes.
    let plain = harness::PLAIN_INDEX;
    let mlhe = harness::MLHE_INDEX;
    write("index_file", "m0-plain", &with_mode(0, plain));
    write("index_file", "m0-mlhe", &with_mode(0, mlhe));
    write("index_file", "m1-plain", &with_mode(1, plain));
    write("index_file", "m1-mlhe", &with_mode(1, mlhe));
    write(
        "index_file",
        "m2-plain-body",
        &with_mode(2, sections(plain).1),
    );
    write(
        "index_file",
        "m3-mlhe-body",
        &with_mode(3, sections(mlhe).1),
    );
    write(
        "index_file",
        "m4-plain-header",
        &with_mode(4, sections(plain).0),
    );
    write(
        "index_file",
        "m4-mlhe-header",
        &with_mode(4, sections(mlhe).0),
    );
    write(
        "index_file",
        "m0-truncated",
        &with_mode(0, &plain[..plain.len() - 41]),
    );
    write("index_file", "m0-magic-only", &with_mode(0, b"BLINDKD\0"));
    write("index_file", "m2-empty-body", &with_mode(2, &[]));
    write(
        "index_file",
        "m2-huge-vec",
        &with_mode(2, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
    );

    // start_request.
    let w = [-240i64, 680, -110, -1800, 1];
    let reqs: Vec<(&str, Vec<u8>)> = vec![
        (
            "knn-all",
            harness::plain_start_request(QueryKind::Knn { k: 5 }, vec![], &w),
        ),
        (
            "knn-a",
            harness::plain_start_request(QueryKind::Knn { k: 1 }, vec!["a".into()], &w),
        ),
        (
            "range-b",
            harness::plain_start_request(QueryKind::Range { radius: 700.0 }, vec!["b".into()], &w),
        ),
        (
            "range-nan",
            harness::plain_start_request(QueryKind::Range { radius: f64::NAN }, vec![], &w),
        ),
        (
            "knn-0",
            harness::plain_start_request(QueryKind::Knn { k: 0 }, vec![], &w),
        ),
        (
            "knn-max",
            harness::plain_start_request(QueryKind::Knn { k: u32::MAX }, vec![], &w),
        ),
        (
            "forbidden-class",
            harness::plain_start_request(QueryKind::Knn { k: 1 }, vec!["c".into()], &w),
        ),
        (
            "short-w",
            harness::plain_start_request(QueryKind::Knn { k: 1 }, vec![], &w[..3]),
        ),
        (
            "extreme-w",
            harness::plain_start_request(
                QueryKind::Knn { k: 1 },
                vec![],
                &[i64::MIN, i64::MAX, i64::MIN, i64::MAX, i64::MAX],
            ),
        ),
        (
            "bad-frame",
            postcard::to_allocvec(&StartRequest {
                kind: QueryKind::Knn { k: 1 },
                classes: vec![],
                query: vec![0xff; 12],
                direct: false,
            })
            .unwrap(),
        ),
        ("empty", vec![]),
    ];
    for (name, r) in reqs {
        write("start_request", name, &r);
    }

    // block_request.
    let br = |blocks: Vec<(u32, u32)>| {
        postcard::to_allocvec(&BlockRequest {
            blocks: blocks
                .into_iter()
                .map(|(class_idx, leaf)| BlockRef { class_idx, leaf })
                .collect(),
        })
        .unwrap()
    };
    write("block_request", "one", &br(vec![(0, 0)]));
    write("block_request", "two", &br(vec![(0, 0), (0, 1)]));
    write(
        "block_request",
        "all-a",
        &br((0..8).map(|l| (0, l)).collect()),
    );
    write("block_request", "repeat", &br(vec![(0, 3); 12]));
    write("block_request", "over-request-limit", &br(vec![(0, 0); 17]));
    write("block_request", "other-class", &br(vec![(1, 0)]));
    write("block_request", "leaf-out-of-range", &br(vec![(0, 8)]));
    write("block_request", "class-huge", &br(vec![(u32::MAX, 0)]));
    write("block_request", "empty-list", &br(vec![]));
    write(
        "block_request",
        "huge-count",
        &[0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0],
    );

    // mlhe_query: dimension byte, then the frame (u64 length, session key, postcard parts).
    let frame = |pk: &[u8], parts: &[Vec<u8>]| {
        blindkd_keys::crypto::frame_query(pk, &postcard::to_allocvec(&parts.to_vec()).unwrap())
    };
    write("mlhe_query", "empty", &[0]);
    write("mlhe_query", "frame-empty", &with_mode(0, &frame(&[], &[])));
    write(
        "mlhe_query",
        "frame-parts-2",
        &with_mode(0, &frame(&[1, 2, 3], &[vec![1], vec![2]])),
    );
    write(
        "mlhe_query",
        "frame-len-huge",
        &with_mode(1, &u64::MAX.to_le_bytes()),
    );
    // Protobuf-shaped ciphertext starts: field 1 (c, bytes), field 2 (level), field 3 (seed).
    let pb = [0x0a, 0x04, 1, 2, 3, 4, 0x10, 0x00, 0x1a, 0x20];
    let mut pb_seed = pb.to_vec();
    pb_seed.extend_from_slice(&[7; 32]);
    write(
        "mlhe_query",
        "pb-ct",
        &with_mode(0, &frame(&pb_seed, &[pb_seed.clone(), pb_seed.clone()])),
    );
    write(
        "mlhe_query",
        "pb-level",
        &with_mode(1, &frame(&[0x10, 0x02], &vec![vec![0x10, 0x01]; 3])),
    );
    write(
        "mlhe_query",
        "pb-garbage",
        &with_mode(
            3,
            &frame(&[0xff; 40], &vec![vec![0x0a, 0xff, 0xff, 0x03]; 5]),
        ),
    );
}
