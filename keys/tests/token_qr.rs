//! QR rendering and scanning, including "photographed" images.
#![allow(clippy::unwrap_used)]

mod token_common;

use std::io::Cursor;

use blindkd_keys::token::{render_qr_png, render_qr_svg, scan_qr};
use image::{imageops, DynamicImage, GrayImage, ImageFormat, Luma};
use token_common::*;

fn png(img: &GrayImage) -> Vec<u8> {
    encode(img, ImageFormat::Png)
}

fn encode(img: &GrayImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    DynamicImage::ImageLuma8(img.clone())
        .write_to(&mut Cursor::new(&mut out), format)
        .unwrap();
    out
}

fn rendered(token: &str) -> GrayImage {
    image::load_from_memory(&render_qr_png(token, 4).unwrap())
        .unwrap()
        .into_luma8()
}

/// Rotates by `degrees` about the centre with bilinear sampling onto a larger white canvas.
fn rotate(img: &GrayImage, degrees: f64) -> GrayImage {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let (sin, cos) = degrees.to_radians().sin_cos();
    let out_w = (w * cos.abs() + h * sin.abs()).ceil() as u32 + 20;
    let out_h = (w * sin.abs() + h * cos.abs()).ceil() as u32 + 20;
    let (cx, cy) = (w / 2.0, h / 2.0);
    let (ox, oy) = (out_w as f64 / 2.0, out_h as f64 / 2.0);
    let sample = |x: i64, y: i64| -> f64 {
        if x < 0 || y < 0 || x >= img.width() as i64 || y >= img.height() as i64 {
            255.0
        } else {
            img.get_pixel(x as u32, y as u32)[0] as f64
        }
    };
    GrayImage::from_fn(out_w, out_h, |x, y| {
        // Inverse map the output pixel centre into the source.
        let (dx, dy) = (x as f64 + 0.5 - ox, y as f64 + 0.5 - oy);
        let sx = cos * dx + sin * dy + cx - 0.5;
        let sy = -sin * dx + cos * dy + cy - 0.5;
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let top = sample(x0, y0) * (1.0 - fx) + sample(x0 + 1, y0) * fx;
        let bottom = sample(x0, y0 + 1) * (1.0 - fx) + sample(x0 + 1, y0 + 1) * fx;
        Luma([(top * (1.0 - fy) + bottom * fy).round() as u8])
    })
}

/// A (2r+1)×(2r+1) box blur, clamping at the edges.
fn box_blur(img: &GrayImage, r: i64) -> GrayImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let mut sum = 0u32;
        let mut n = 0u32;
        for dy in -r..=r {
            for dx in -r..=r {
                let sx = (x as i64 + dx).clamp(0, w - 1) as u32;
                let sy = (y as i64 + dy).clamp(0, h - 1) as u32;
                sum += img.get_pixel(sx, sy)[0] as u32;
                n += 1;
            }
        }
        Luma([(sum / n) as u8])
    })
}

/// Mid-grey paper and dark-grey ink instead of pure white and black.
fn low_contrast(img: &GrayImage) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let v = img.get_pixel(x, y)[0] as u32;
        Luma([(60 + v * (200 - 60) / 255) as u8])
    })
}

#[test]
fn png_round_trip() {
    let (token, _, _) = fixture();
    for px in [2, 4, 10] {
        assert_eq!(scan_qr(&render_qr_png(&token, px).unwrap()).unwrap(), token);
    }
}

#[test]
fn svg_renders() {
    let (token, _, _) = fixture();
    let svg = render_qr_svg(&token).unwrap();
    assert!(svg.contains("<svg"));
    assert!(render_qr_svg("lower case is not alphanumeric").is_err());
    assert!(render_qr_png("", 4).is_err());
}

#[test]
fn resized_scans() {
    let (token, _, _) = fixture();
    let img = rendered(&token);
    for factor in [0.83, 1.37, 2.6] {
        let (w, h) = (
            (img.width() as f64 * factor) as u32,
            (img.height() as f64 * factor) as u32,
        );
        let resized = imageops::resize(&img, w, h, imageops::FilterType::Triangle);
        assert_eq!(scan_qr(&png(&resized)).unwrap(), token, "factor {factor}");
    }
}

#[test]
fn rotated_scans() {
    let (token, _, _) = fixture();
    let img = rendered(&token);
    for degrees in [3.0, -4.0, 5.0] {
        let rotated = rotate(&img, degrees);
        assert_eq!(scan_qr(&png(&rotated)).unwrap(), token, "{degrees} degrees");
    }
}

#[test]
fn blurred_scans() {
    // rqrr's own threshold fails on every one of these; the fallback thresholds must not.
    let (token, _, _) = fixture();
    for px in [4, 6, 8] {
        let img = image::load_from_memory(&render_qr_png(&token, px).unwrap())
            .unwrap()
            .into_luma8();
        assert_eq!(scan_qr(&png(&box_blur(&img, 1))).unwrap(), token, "{px} px");
    }
}

#[test]
fn tiny_render_scans() {
    // One pixel per module: rqrr 0.9 panics on this at native size (`scan >= 1`).
    let (token, _, _) = fixture();
    assert_eq!(scan_qr(&render_qr_png(&token, 1).unwrap()).unwrap(), token);
}

#[test]
fn photographed_scans() {
    // Everything at once: resized, rotated, blurred, low contrast, saved as JPEG.
    let (token, _, _) = fixture();
    let img = rendered(&token);
    let (w, h) = (img.width() * 17 / 10, img.height() * 17 / 10);
    let img = imageops::resize(&img, w, h, imageops::FilterType::Triangle);
    let img = low_contrast(&box_blur(&rotate(&img, 4.0), 1));
    assert_eq!(scan_qr(&png(&img)).unwrap(), token);
    assert_eq!(scan_qr(&encode(&img, ImageFormat::Jpeg)).unwrap(), token);
}

#[test]
fn no_qr_code_is_a_clear_error() {
    let blank = GrayImage::from_pixel(200, 200, Luma([255]));
    let err = scan_qr(&png(&blank)).unwrap_err().to_string();
    assert!(err.contains("no QR code found"), "{err}");
    let other = render_qr_png("HELLO WORLD", 4).unwrap();
    let err = scan_qr(&other).unwrap_err().to_string();
    assert!(err.contains("not a BKD1: token"), "{err}");
    let err = scan_qr(b"not an image").unwrap_err().to_string();
    assert!(err.contains("PNG or JPEG"), "{err}");
}

/// A bitmap the fuzzer found (`fixtures/qr-many-finders.bin`: mode byte, width, then one bit a
/// pixel): 87×2180 pixels of stripes that look like finder patterns to the detector, whose work
/// grows about with the cube of the area. It must end in an error, within the scan budget.
#[test]
fn a_crafted_many_finder_image_is_refused_not_a_hang() {
    let data = include_bytes!("fixtures/qr-many-finders.bin");
    let w = u32::from(data[1]);
    let bits: Vec<bool> = data[2..]
        .iter()
        .flat_map(|b| (0..8).map(move |i| b & (0x80 >> i) != 0))
        .collect();
    let h = bits.len() as u32 / w;
    let img = GrayImage::from_fn(w, h, |x, y| {
        Luma([if bits[(y * w + x) as usize] { 0 } else { 255 }])
    });
    let e = scan_qr(&png(&img)).unwrap_err();
    assert!(
        matches!(
            e,
            blindkd_engine::Error::Malformed { .. } | blindkd_engine::Error::LimitExceeded(_)
        ),
        "{e:?}"
    );
}
