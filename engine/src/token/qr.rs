//! Rendering tokens as QR codes (alphanumeric mode, ECC level Q) and scanning them back.

use std::io::Cursor;

use std::panic::AssertUnwindSafe;

use image::{imageops, DynamicImage, GrayImage, ImageFormat, ImageReader, Limits, Luma};
use qrcode::bits::Bits;
use qrcode::{EcLevel, QrCode, Version};

use super::TOKEN_PREFIX;
use crate::{Error, Result};

/// Largest image file accepted by [`scan_qr`], in bytes.
const MAX_IMAGE_BYTES: usize = 64 << 20;
/// Largest image side accepted by [`scan_qr`], in pixels.
const MAX_IMAGE_SIDE: u32 = 12_000;
/// Most memory the image decoder may allocate.
const MAX_IMAGE_ALLOC: u64 = 512 << 20;
/// Largest module size [`render_qr_png`] draws, in pixels.
const MAX_MODULE_PX: u32 = 64;

/// The QR version (1–40) `text` renders at: alphanumeric mode, ECC level Q.
pub fn qr_version(text: &str) -> Result<u8> {
    let code = encode(text)?;
    match code.version() {
        Version::Normal(v) => {
            u8::try_from(v).map_err(|_| Error::InvalidInput("bad QR version".into()))
        }
        Version::Micro(_) => Err(Error::InvalidInput("unexpected micro QR".into())),
    }
}

/// Renders `text` as a PNG QR code with `module_px` pixels per module and the standard
/// four-module quiet zone. `text` must be QR-alphanumeric (every `BKD1:` token is).
pub fn render_qr_png(text: &str, module_px: u32) -> Result<Vec<u8>> {
    if module_px == 0 || module_px > MAX_MODULE_PX {
        return Err(Error::InvalidInput(format!(
            "module size must be 1..={MAX_MODULE_PX} pixels"
        )));
    }
    let code = encode(text)?;
    let img = code
        .render::<Luma<u8>>()
        .quiet_zone(true)
        .module_dimensions(module_px, module_px)
        .build();
    let mut png = Vec::new();
    DynamicImage::ImageLuma8(img)
        .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
        .map_err(|e| Error::InvalidInput(format!("encoding PNG: {e}")))?;
    Ok(png)
}

/// Renders `text` as an SVG QR code (quiet zone included). `text` must be QR-alphanumeric.
pub fn render_qr_svg(text: &str) -> Result<String> {
    let code = encode(text)?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .quiet_zone(true)
        .min_dimensions(256, 256)
        .build())
}

/// Finds a `BKD1:` token in a PNG or JPEG image (a screenshot or a photograph of the QR code)
/// and returns its text. Other QR codes in the image are ignored.
///
/// A scan that has not finished after [`SCAN_BUDGET`] is abandoned with
/// [`Error::LimitExceeded`]: crafted images full of finder-pattern-like shapes make the
/// detector's work grow about with the cube of the image area (fuzzing found one that takes
/// 3 s at 87×2180 pixels; at the largest scanned size it could take many minutes). The detector
/// cannot be interrupted, so the abandoned scan finishes on its own thread in the background,
/// or ends with the process.
pub fn scan_qr(image_bytes: &[u8]) -> Result<String> {
    let gray = normalize_size(decode_gray(image_bytes)?);
    with_budget(SCAN_BUDGET, move || scan_gray(&gray))
}

/// How long [`scan_qr`] waits for the detector. A real photograph or render scans in well under a
/// second.
pub const SCAN_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `scan` on its own thread and waits at most `budget` for it.
fn with_budget(
    budget: std::time::Duration,
    scan: impl FnOnce() -> Result<String> + Send + 'static,
) -> Result<String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("qr-scan".into())
        .spawn(move || {
            let _ = tx.send(scan());
        })
        .map_err(|e| Error::InvalidInput(format!("starting the QR scanner: {e}")))?;
    match rx.recv_timeout(budget) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Error::LimitExceeded(format!(
            "the QR scan gave up after {} s: the image has too many QR-like shapes; \
             photograph the token alone, flat and filling most of the frame",
            budget.as_secs()
        ))),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::malformed(
            "QR image",
            "the QR detector failed on this image",
        )),
    }
}

/// The first stage of [`scan_qr`]: decodes a PNG or JPEG file to 8-bit grayscale under the
/// scanner's size and allocation limits.
fn decode_gray(image_bytes: &[u8]) -> Result<GrayImage> {
    let what = "QR image";
    if image_bytes.len() > MAX_IMAGE_BYTES {
        return Err(Error::LimitExceeded(format!(
            "image of {} bytes exceeds {MAX_IMAGE_BYTES}",
            image_bytes.len()
        )));
    }
    let mut reader = ImageReader::new(Cursor::new(image_bytes))
        .with_guessed_format()
        .map_err(|e| Error::malformed(what, e))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        _ => return Err(Error::malformed(what, "not a PNG or JPEG image")),
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    Ok(reader
        .decode()
        .map_err(|e| Error::malformed(what, e))?
        .into_luma8())
}

/// The stages of [`scan_qr`] one at a time, for the fuzzer (`fuzz/src/harness.rs`), which
/// cannot afford the rescaling on every input. Not a stable API.
#[doc(hidden)]
pub mod stages {
    use super::{decode_gray, detect, guarded, no_token, scan_gray, Attempt, GrayImage};
    use crate::{Error, Result};

    /// Stage 1: the image decoder with the scanner's limits; `(width, height, pixels)`, one
    /// byte per pixel, row-major.
    pub fn decode(image_bytes: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
        let gray = decode_gray(image_bytes)?;
        let (w, h) = gray.dimensions();
        Ok((w, h, gray.into_raw()))
    }

    /// Stage 3 (stage 2 rescales): the three binarisations, grid detection and decoding on a
    /// grayscale image exactly as given.
    pub fn scan(width: u32, height: u32, pixels: Vec<u8>) -> Result<String> {
        let gray = GrayImage::from_raw(width, height, pixels)
            .ok_or_else(|| Error::InvalidInput("pixel buffer does not match its size".into()))?;
        scan_gray(&gray)
    }

    /// Stage 4 alone: decodes a QR module matrix (`dark[row * size + column]`, no quiet zone)
    /// as the detector hands each grid it found to the payload decoder: format and version
    /// bits, unmasking, Reed–Solomon correction, segment decoding, then the `BKD1:` check.
    pub fn decode_modules(size: usize, dark: &[bool]) -> Result<String> {
        struct Modules<'a> {
            size: usize,
            dark: &'a [bool],
        }
        impl rqrr::BitGrid for Modules<'_> {
            fn size(&self) -> usize {
                self.size
            }
            fn bit(&self, y: usize, x: usize) -> bool {
                self.dark[y * self.size + x]
            }
        }
        if size.checked_mul(size) != Some(dark.len()) {
            return Err(Error::InvalidInput(
                "module matrix does not match its size".into(),
            ));
        }
        let grid = rqrr::Grid::new(Modules { size, dark });
        match guarded(|| detect(std::iter::once(grid.decode()))) {
            Attempt::Token(text) => Ok(text),
            Attempt::NoGrid => Err(no_token(None)),
            Attempt::Problem(p) => Err(no_token(Some(p))),
        }
    }

    /// Stage 3 on an image that is already black and white (`dark[y * width + x]`): one
    /// detection and decoding pass, as each of the three binarisations runs.
    pub fn scan_bitmap(width: usize, height: usize, dark: &[bool]) -> Result<String> {
        if width.checked_mul(height) != Some(dark.len()) {
            return Err(Error::InvalidInput("bitmap does not match its size".into()));
        }
        match guarded(|| {
            let mut prepared =
                rqrr::PreparedImage::prepare_from_bitmap(width, height, |x, y| dark[y * width + x]);
            detect(prepared.detect_grids().iter().map(|g| g.decode()))
        }) {
            Attempt::Token(text) => Ok(text),
            Attempt::NoGrid => Err(no_token(None)),
            Attempt::Problem(p) => Err(no_token(Some(p))),
        }
    }
}

/// Images are scanned at a longest side between these bounds, in pixels: small renders are
/// enlarged (the detector needs several pixels per module) and large photographs shrunk.
const SCAN_MIN_SIDE: u32 = 600;
const SCAN_MAX_SIDE: u32 = 2400;

fn normalize_size(gray: GrayImage) -> GrayImage {
    let (w, h) = gray.dimensions();
    let longest = w.max(h).max(1);
    if longest < SCAN_MIN_SIDE {
        let k = SCAN_MIN_SIDE.div_ceil(longest).min(16);
        imageops::resize(&gray, w * k, h * k, imageops::FilterType::Triangle)
    } else if longest > SCAN_MAX_SIDE {
        let (nw, nh) = (
            (u64::from(w) * u64::from(SCAN_MAX_SIDE) / u64::from(longest)).max(1) as u32,
            (u64::from(h) * u64::from(SCAN_MAX_SIDE) / u64::from(longest)).max(1) as u32,
        );
        imageops::resize(&gray, nw, nh, imageops::FilterType::Triangle)
    } else {
        gray
    }
}

/// What the scan of one binarisation found.
enum Attempt {
    Token(String),
    NoGrid,
    Problem(String),
}

/// Tries the detector's own adaptive threshold first, then a global (Otsu) and a local-mean
/// threshold of our own: the detector's threshold loses thin white rings around finder
/// patterns once the edges are blurred, as in photographs.
fn scan_gray(gray: &GrayImage) -> Result<String> {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    let mut problem = None;
    for strategy in 0..3 {
        let attempt = guarded(|| {
            let mut prepared = match strategy {
                // rqrr only asks for coordinates inside the w×h it was given.
                0 => rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
                    gray.get_pixel(x as u32, y as u32)[0]
                }),
                1 => {
                    let t = otsu_threshold(gray);
                    rqrr::PreparedImage::prepare_from_bitmap(w, h, |x, y| {
                        gray.get_pixel(x as u32, y as u32)[0] <= t
                    })
                }
                _ => {
                    let dark = local_mean_dark(gray);
                    rqrr::PreparedImage::prepare_from_bitmap(w, h, |x, y| dark[y * w + x])
                }
            };
            detect(prepared.detect_grids().iter().map(|g| g.decode()))
        });
        match attempt {
            Attempt::Token(text) => return Ok(text),
            Attempt::NoGrid => {}
            Attempt::Problem(p) => problem = Some(p),
        }
    }
    Err(no_token(problem))
}

/// Reads what the grids found in one binarised image decoded to (`grid.decode()` each, in
/// order), stopping at the first token.
fn detect(
    decoded: impl Iterator<Item = Result<(rqrr::MetaData, String), rqrr::DeQRError>>,
) -> Attempt {
    let mut found = false;
    let mut problem = String::new();
    for result in decoded {
        found = true;
        match result {
            Ok((_, content)) if content.starts_with(TOKEN_PREFIX) => {
                return Attempt::Token(content)
            }
            Ok(_) => problem = format!("the QR code found is not a {TOKEN_PREFIX} token"),
            Err(e) => problem = format!("a QR code was found but did not decode: {e}"),
        }
    }
    if found {
        Attempt::Problem(problem)
    } else {
        Attempt::NoGrid
    }
}

/// The error for an image without a token; `problem` is what the last attempt that found a
/// grid saw.
fn no_token(problem: Option<String>) -> Error {
    Error::malformed(
        "QR image",
        problem.unwrap_or_else(|| {
            "no QR code found; photograph it flat, in focus, filling most of the frame".into()
        }),
    )
}

/// Runs the QR detector, turning a panic inside it into a failed attempt.
///
/// rqrr 0.9 asserts on some degenerate grids (e.g. `scan >= 1` in its timing-pattern
/// measurement) instead of returning an error; a bad image must not take the process down.
/// This relies on unwinding (the default panic strategy); the panic message still reaches the
/// panic hook.
fn guarded(f: impl FnOnce() -> Attempt) -> Attempt {
    std::panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Attempt::Problem("the QR detector failed on this image".into()))
}

/// Otsu's global threshold: dark is `value <= threshold`.
fn otsu_threshold(gray: &GrayImage) -> u8 {
    let mut hist = [0u64; 256];
    for p in gray.pixels() {
        hist[usize::from(p[0])] += 1;
    }
    let total: u64 = hist.iter().sum();
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(v, &n)| v as f64 * n as f64)
        .sum();
    let (mut weight_bg, mut sum_bg) = (0u64, 0f64);
    let (mut best, mut best_var) = (127u8, -1f64);
    for (t, &n) in hist.iter().enumerate() {
        weight_bg += n;
        sum_bg += t as f64 * n as f64;
        let weight_fg = total - weight_bg;
        if weight_bg == 0 || weight_fg == 0 {
            continue;
        }
        let mean_bg = sum_bg / weight_bg as f64;
        let mean_fg = (sum_all - sum_bg) / weight_fg as f64;
        let var = weight_bg as f64 * weight_fg as f64 * (mean_bg - mean_fg).powi(2);
        if var > best_var {
            best_var = var;
            best = t as u8;
        }
    }
    best
}

/// Local-mean threshold over a square window of an eighth of the longest side (an integral
/// image): a pixel is dark when it is below 90 % of its neighbourhood's mean.
fn local_mean_dark(gray: &GrayImage) -> Vec<bool> {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    let r = (w.max(h) / 16).max(7);
    // Sums fit u64 easily: at most SCAN_MAX_SIDE² × 255.
    let mut integral = vec![0u64; (w + 1) * (h + 1)];
    for y in 0..h {
        let mut row = 0u64;
        for x in 0..w {
            row += u64::from(gray.get_pixel(x as u32, y as u32)[0]);
            integral[(y + 1) * (w + 1) + x + 1] = integral[y * (w + 1) + x + 1] + row;
        }
    }
    let mut dark = vec![false; w * h];
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
        for x in 0..w {
            let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(w));
            let sum = integral[y1 * (w + 1) + x1] + integral[y0 * (w + 1) + x0]
                - integral[y0 * (w + 1) + x1]
                - integral[y1 * (w + 1) + x0];
            let count = ((y1 - y0) * (x1 - x0)) as u64;
            let v = u64::from(gray.get_pixel(x as u32, y as u32)[0]);
            dark[y * w + x] = v * count * 10 < sum * 9;
        }
    }
    dark
}

/// The QR code for `text`: alphanumeric mode, ECC level Q, the smallest version that fits.
fn encode(text: &str) -> Result<QrCode> {
    const ALPHANUMERIC: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:";
    if text.is_empty() || !text.bytes().all(|b| ALPHANUMERIC.contains(&b)) {
        return Err(Error::InvalidInput(
            "only QR-alphanumeric text (a BKD1: token) is rendered".into(),
        ));
    }
    for v in 1..=40 {
        let mut bits = Bits::new(Version::Normal(v));
        if bits.push_alphanumeric_data(text.as_bytes()).is_err()
            || bits.push_terminator(EcLevel::Q).is_err()
        {
            continue;
        }
        return QrCode::with_bits(bits, EcLevel::Q)
            .map_err(|e| Error::InvalidInput(format!("QR encoding: {e}")));
    }
    Err(Error::LimitExceeded(format!(
        "{} characters do not fit a QR code at ECC level Q",
        text.len()
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_scan_within_budget_returns_its_result() {
        let r = with_budget(SCAN_BUDGET, || Ok("BKD1:X".to_string()));
        assert_eq!(r.unwrap(), "BKD1:X");
        let r = with_budget(SCAN_BUDGET, || Err(no_token(None)));
        assert!(matches!(r, Err(Error::Malformed { .. })), "{r:?}");
    }

    #[test]
    fn a_scan_over_budget_is_abandoned_with_limit_exceeded() {
        // The scan blocks until the test lets it go, far past its 10 ms budget.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let r = with_budget(std::time::Duration::from_millis(10), move || {
            let _ = wait.recv();
            Ok("BKD1:LATE".to_string())
        });
        assert!(matches!(r, Err(Error::LimitExceeded(_))), "{r:?}");
        drop(release);
    }

    #[test]
    fn a_scanner_that_dies_is_an_error_not_a_hang() {
        let r = with_budget(SCAN_BUDGET, || panic!("detector bug"));
        assert!(matches!(r, Err(Error::Malformed { .. })), "{r:?}");
    }
}
