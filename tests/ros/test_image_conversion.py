"""sensor_msgs Image/CompressedImage -> RGB: every encoding, strides, bad messages."""
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from molmo2_ros.core.image_conversion import (MAX_IMAGE_PIXELS, ImageTooLarge, compressed_to_rgb, encoded_size,
                                              image_to_rgb, image_view)
from molmo2_ros.ros.image_messages import rgb_to_compressed, rgb_to_image

sys.path.insert(0, str(Path(__file__).parent))
from node_harness import png_bomb  # noqa: E402

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)


def image(pixels, encoding, pad=0, bigendian=False):
    msg = Image()
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding = encoding
    row = pixels.reshape(msg.height, -1).view(np.uint8)
    msg.step = row.shape[1] + pad
    msg.is_bigendian = bigendian
    msg.data = np.pad(row, ((0, 0), (0, pad))).tobytes()
    return msg


@pytest.mark.parametrize("encoding,pixels", [
    ("rgb8", RGB),
    ("bgr8", RGB[:, :, ::-1]),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 7, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 7, np.uint8)])),
])
@pytest.mark.parametrize("pad", [0, 5])
def test_colour_encodings_with_and_without_row_padding(encoding, pixels, pad):
    rgb, size = image_to_rgb(image(np.ascontiguousarray(pixels), encoding, pad=pad))
    assert size == (8, 6)
    np.testing.assert_array_equal(rgb, RGB)


def test_mono8_and_mono16_both_byte_orders():
    gray = RGB[:, :, 0]
    rgb, _ = image_to_rgb(image(gray, "mono8"))
    np.testing.assert_array_equal(rgb, np.dstack([gray] * 3))
    deep = gray.astype(np.uint16) * 256 + 17
    for bigendian, dtype in ((False, "<u2"), (True, ">u2")):
        rgb, _ = image_to_rgb(image(deep.astype(dtype), "mono16", bigendian=bigendian))
        np.testing.assert_array_equal(rgb[:, :, 1], gray)


def test_yuv422_variants_match_opencv():
    uyvy = RNG.integers(0, 256, (6, 8, 2), dtype=np.uint8)
    for encoding, code in (("uyvy", cv2.COLOR_YUV2RGB_UYVY), ("yuv422", cv2.COLOR_YUV2RGB_UYVY),
                           ("yuyv", cv2.COLOR_YUV2RGB_YUY2)):
        rgb, _ = image_to_rgb(image(uyvy, encoding))
        np.testing.assert_array_equal(rgb, cv2.cvtColor(uyvy, code))


def test_raw_view_is_zero_copy():
    msg = image(RGB, "rgb8", pad=4)
    view = image_view(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))


def test_shrinks_to_max_side_and_reports_the_source_size():
    big = np.zeros((1080, 1920, 3), np.uint8)
    big[:, 960:] = (255, 0, 0)
    rgb, size = image_to_rgb(image(big[:, :, ::-1].copy(), "bgr8"), max_side=480)
    assert size == (1920, 1080) and rgb.shape == (270, 480, 3)
    assert tuple(rgb[0, -1]) == (255, 0, 0)


@pytest.mark.parametrize("mutate,match", [
    (lambda m: setattr(m, "encoding", "bayer_rggb8"), "unsupported image encoding 'bayer_rggb8'"),
    (lambda m: setattr(m, "encoding", ""), "unsupported image encoding ''"),
    (lambda m: setattr(m, "step", 10), "step 10 is smaller"),
    (lambda m: setattr(m, "data", m.data[:-1]), "data has 143 bytes"),
    (lambda m: setattr(m, "height", 0), "zero-size"),
    (lambda m: setattr(m, "width", 0), "zero-size"),
])
def test_bad_messages_are_clear_errors(mutate, match):
    msg = image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ValueError, match=match):
        image_to_rgb(msg)


def test_compressed_round_trip_and_garbage():
    from builtin_interfaces.msg import Time
    msg = rgb_to_compressed(RGB, Time(), "cam", fmt="png")
    rgb, size = compressed_to_rgb(msg)
    assert size == (8, 6)
    np.testing.assert_array_equal(rgb, RGB)
    bad = CompressedImage(format="jpeg", data=b"not a jpeg at all")
    with pytest.raises(ValueError, match="not a JPEG, PNG or WebP"):
        compressed_to_rgb(bad)
    jpeg = rgb_to_compressed(RGB, Time(), "cam", fmt="jpeg").data
    with pytest.raises(ValueError, match="could not decode"):  # a JPEG header, then garbage
        compressed_to_rgb(CompressedImage(format="jpeg", data=jpeg[:len(jpeg) // 2]))
    with pytest.raises(ValueError, match="empty"):
        compressed_to_rgb(CompressedImage(format="jpeg"))
    back, _ = image_to_rgb(rgb_to_image(RGB, Time(), "cam", encoding="bgr8"))
    np.testing.assert_array_equal(back, RGB)


@pytest.mark.parametrize("width, height, max_side", [(3840, 2160, 640), (1920, 1080, 640),
                                                     (641, 479, 640), (1280, 720, 0)])
def test_large_jpeg_is_decoded_scaled_with_the_full_source_size(width, height, max_side):
    from builtin_interfaces.msg import Time
    from molmo2_ros.core.frame_window import fit_to_max_side
    from molmo2_ros.core.image_conversion import jpeg_size

    # Smooth content, so a scaled decode and a full decode + shrink agree closely.
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 127 // (width + height)],
                      -1).astype(np.uint8)
    msg = rgb_to_compressed(pixels, Time(), "cam", fmt="jpeg", quality=95)
    assert jpeg_size(np.frombuffer(msg.data, np.uint8)) == (width, height)
    rgb, size = compressed_to_rgb(msg, max_side)
    assert size == (width, height)
    expected = fit_to_max_side(pixels, max_side)
    assert rgb.shape == expected.shape
    assert np.abs(rgb.astype(int) - expected).mean() < 2.0


def test_jpeg_size_of_other_data_is_none():
    from molmo2_ros.core.image_conversion import jpeg_size

    assert jpeg_size(np.frombuffer(b"\x89PNG\r\n\x1a\n0000", np.uint8)) is None
    assert jpeg_size(np.frombuffer(b"\xff\xd8\xff\xe0\x00", np.uint8)) is None  # cut short


@pytest.mark.parametrize("ext,params", [(".png", []), (".jpg", []), (".webp", []),
                                        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80])])
@pytest.mark.parametrize("width,height", [(8, 6), (1000, 700), (3, 5000)])
def test_encoded_size_reads_the_header(ext, params, width, height):
    ok, data = cv2.imencode(ext, np.zeros((height, width, 3), np.uint8), params)
    assert ok and encoded_size(data) == (width, height)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_bomb(12000, 12000)
    assert len(bomb) < 200_000 and encoded_size(np.frombuffer(bomb, np.uint8)) == (12000, 12000)
    with pytest.raises(ImageTooLarge, match="12000x12000 = 144000000 pixels, more than max_image_pixels"):
        compressed_to_rgb(CompressedImage(format="png", data=bomb))
    assert compressed_to_rgb(CompressedImage(format="png", data=png_bomb(16, 12)))[1] == (16, 12)
    assert 7680 * 4320 == MAX_IMAGE_PIXELS  # an 8K frame passes by default
    eight_k = CompressedImage(format="png", data=png_bomb(7680, 4320))
    assert compressed_to_rgb(eight_k, max_side=640)[1] == (7680, 4320)
    with pytest.raises(ImageTooLarge):
        compressed_to_rgb(eight_k, max_pixels=7680 * 4320 - 1)
    # Formats whose header is not read (BMP, TIFF, ...) are refused: their size is unknown.
    with pytest.raises(ValueError, match="cannot be checked before decoding"):
        compressed_to_rgb(CompressedImage(format="bmp", data=cv2.imencode(".bmp", RGB)[1].tobytes()))


def test_raw_image_with_too_many_pixels_is_refused():
    msg = image(RGB, "rgb8")
    assert image_to_rgb(msg, max_pixels=48)[1] == (8, 6)
    with pytest.raises(ImageTooLarge, match="8x6 = 48 pixels, more than max_image_pixels 47"):
        image_to_rgb(msg, max_pixels=47)
    huge = Image(height=12000, width=12000, encoding="mono8", step=12000)  # refused before its data
    with pytest.raises(ImageTooLarge, match="12000x12000"):
        image_to_rgb(huge)
