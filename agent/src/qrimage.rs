//! QR code images: rendering (PNG, SVG, terminal) and reading back from a photo (PNG/JPEG).

use crate::error::AgentError;
use image::{GrayImage, Luma};
use qrcode::{EcLevel, QrCode};
use std::path::Path;

/// Pixels per QR module in PNG output.
pub const PNG_MODULE_PX: u32 = 8;
/// Largest image side read back (bigger photos are scaled down first).
pub const MAX_READ_SIDE: u32 = 4000;

fn code(text: &str) -> Result<QrCode, AgentError> {
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|e| AgentError::QrRender(e.to_string()))
}

/// The QR code of `text` as a grey-scale image (quiet zone of 4 modules included).
pub fn to_image(text: &str) -> Result<GrayImage, AgentError> {
    let code = code(text)?;
    let w = code.width() as u32;
    let quiet = 4u32;
    let side = (w + 2 * quiet) * PNG_MODULE_PX;
    let colors = code.to_colors();
    Ok(GrayImage::from_fn(side, side, |x, y| {
        let (mx, my) = (x / PNG_MODULE_PX, y / PNG_MODULE_PX);
        if mx < quiet || my < quiet || mx >= w + quiet || my >= w + quiet {
            return Luma([255]);
        }
        let i = ((my - quiet) * w + (mx - quiet)) as usize;
        match colors.get(i) {
            Some(qrcode::Color::Dark) => Luma([0]),
            _ => Luma([255]),
        }
    }))
}

/// Writes the QR code of `text` as a PNG file.
pub fn write_png(text: &str, path: &Path) -> Result<(), AgentError> {
    to_image(text)?
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| AgentError::io(path, std::io::Error::other(e.to_string())))
}

/// The QR code of `text` as an SVG document.
pub fn to_svg(text: &str) -> Result<String, AgentError> {
    Ok(code(text)?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(256, 256)
        .build())
}

/// The QR code of `text` for a terminal (two modules per character cell).
pub fn to_terminal(text: &str) -> Result<String, AgentError> {
    Ok(code(text)?
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}

/// Reads the first QR code found in a PNG or JPEG image and returns its text.
pub fn read_image(path: &Path) -> Result<String, AgentError> {
    let fail = |reason: String| AgentError::QrImage {
        path: path.to_owned(),
        reason,
    };
    let img = image::ImageReader::open(path)
        .map_err(|e| AgentError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| AgentError::io(path, e))?
        .decode()
        .map_err(|e| fail(format!("not a readable PNG/JPEG image: {e}")))?;
    let img = if img.width().max(img.height()) > MAX_READ_SIDE {
        img.thumbnail(MAX_READ_SIDE, MAX_READ_SIDE)
    } else {
        img
    };
    read_gray(&img.to_luma8()).map_err(fail)
}

/// Reads the first QR code in a grey-scale image. Uses `decode_to`, so byte-mode content
/// works as well as alphanumeric mode.
pub fn read_gray(img: &GrayImage) -> Result<String, String> {
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(
        img.width() as usize,
        img.height() as usize,
        |x, y| img.get_pixel(x as u32, y as u32).0[0],
    );
    let grids = prepared.detect_grids();
    if grids.is_empty() {
        return Err("no QR code found".into());
    }
    let mut last = String::new();
    for g in grids {
        let mut bytes = Vec::new();
        match g.decode_to(&mut bytes) {
            Ok(_) => {
                return String::from_utf8(bytes)
                    .map_err(|_| "the QR code does not hold text".into())
            }
            Err(e) => last = format!("QR code found but unreadable: {e:?}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_alphanumeric_and_byte_mode() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "PB1:6BFOXN*TS0BI$ZD4N9:9S6RCVN5+O30K3",
            "bytes: lower case é",
        ] {
            let p = dir.path().join("q.png");
            write_png(text, &p).unwrap();
            assert_eq!(read_image(&p).unwrap(), text);
        }
        let svg = to_svg("PB1:X").unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"));
        assert!(to_terminal("PB1:X").unwrap().contains('█'));
    }

    #[test]
    fn a_scaled_lossy_jpeg_photo_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let text = "PB1:6BFOXN*TS0BI$ZD4N9:9S6RCVN5+O30K3QWERTY1234";
        let img = to_image(text).unwrap();
        // A "photo": odd size, smoothed, on a grey background, JPEG quality 60.
        let small = image::imageops::resize(&img, 411, 411, image::imageops::FilterType::Triangle);
        let mut photo = GrayImage::from_pixel(640, 480, Luma([200]));
        image::imageops::overlay(&mut photo, &small, 120, 30);
        let p = dir.path().join("photo.jpg");
        let mut f = std::fs::File::create(&p).unwrap();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut f, 60)
            .encode_image(&photo)
            .unwrap();
        drop(f);
        assert_eq!(read_image(&p).unwrap(), text);
    }

    #[test]
    fn unreadable_images_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blank.png");
        GrayImage::from_pixel(50, 50, Luma([255])).save(&p).unwrap();
        assert!(matches!(read_image(&p), Err(AgentError::QrImage { .. })));
        let t = dir.path().join("text.png");
        std::fs::write(&t, "not an image").unwrap();
        assert!(matches!(read_image(&t), Err(AgentError::QrImage { .. })));
        assert!(matches!(
            read_image(&dir.path().join("missing.png")),
            Err(AgentError::Io { .. })
        ));
    }
}
