"""3D from registered depth (molmo2_ros.core.depth), with numbers: back-projection
through undistorted and distorted cameras, depth decoding, the robust depth, the
buffer's sync and memory policy, and every reason a point gets no position."""
from __future__ import annotations

import math
import struct
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from molmo2_ros.core.depth import (CameraModel, DepthBuffer, DepthImage, DepthLookup, depth_from_compressed,
                                   depth_from_image, locate, robust_depth, units_problem, with_positions)
from molmo2_ros.core.grounding import GroundedPoint, Grounding, Task, Track
from molmo2_ros.sim.depth_scene import DepthScene, default_camera
from molmo2_ros.sim.shapes_world import make_clip

NS = 1_000_000_000
CAM = "camera_optical_frame"
PLUMB_BOB = (-0.28, 0.09, 0.001, -0.0015, -0.012)
RATIONAL = (0.4, -0.1, 0.0008, -0.001, 0.02, 0.7, -0.05, 0.03)


def camera(model: str = "plumb_bob", d=(0.0,) * 5, size=(640, 480)) -> CameraModel:
    return CameraModel(width=size[0], height=size[1], fx=525.0, fy=520.0, cx=319.2, cy=241.7,
                       distortion_model=model, d=tuple(d), frame_id=CAM)


@pytest.mark.parametrize("model,d", [("plumb_bob", (0.0,) * 5), ("plumb_bob", PLUMB_BOB),
                                     ("rational_polynomial", RATIONAL)])
def test_back_projection_inverts_the_cameras_projection(model, d):
    cam = camera(model, d)
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-0.5, 0.5, 50), rng.uniform(-0.35, 0.35, 50), np.ones(50)])
    points *= rng.uniform(0.3, 8.0, 50)[:, None]
    pixels = cam.project(points)
    rays = cam.rays(pixels)
    back = np.column_stack([rays, np.ones(50)]) * points[:, 2:3]
    assert np.max(np.linalg.norm(back - points, axis=1) / points[:, 2]) < 1e-6
    if cam.distorted:  # ignoring the distortion would be far off at the image edges
        naive = (pixels - 0.5 - [cam.cx, cam.cy]) / [cam.fx, cam.fy]
        assert np.max(np.linalg.norm(naive - rays, axis=1)) > 0.02


def test_scaled_camera_sees_the_same_ray_at_the_same_relative_pixel():
    full = camera("plumb_bob", PLUMB_BOB)
    half = full.scaled(320, 240)
    assert (half.fx, half.fy) == (full.fx / 2, full.fy / 2)
    xy = np.array([[100.25, 400.5], [600.0, 20.0]])
    np.testing.assert_allclose(half.rays(xy / 2), full.rays(xy), atol=1e-9)


def test_unusable_camera_info_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="not calibrated"):
        CameraModel(640, 480, 0.0, 0.0, 320, 240)
    with pytest.raises(ValueError, match="equidistant.*not supported"):
        CameraModel(640, 480, 500, 500, 320, 240, "equidistant", (0.1, 0.0, 0.0, 0.0))
    # a fisheye's zero coefficients are not a pinhole: refused too
    with pytest.raises(ValueError, match="equidistant.*not supported"):
        CameraModel(640, 480, 500, 500, 320, 240, "equidistant", (0.0,) * 4)
    # zero or no coefficients of a supported model are no distortion at all
    assert not CameraModel(640, 480, 500, 500, 320, 240, "plumb_bob", (0.0,) * 5).distorted
    assert not CameraModel(640, 480, 500, 500, 320, 240, "plumb_bob", ()).distorted
    info = SimpleNamespace(width=640, height=480, k=[525, 0, 319.5, 0, 520, 239.5, 0, 0, 1],
                           d=list(PLUMB_BOB), distortion_model="plumb_bob", header=SimpleNamespace(frame_id=CAM))
    cam = CameraModel.from_camera_info(info)
    assert (cam.fx, cam.fy, cam.cx, cam.cy, cam.d, cam.frame_id) == (525, 520, 319.5, 239.5, PLUMB_BOB, CAM)


def image_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False):
    rows = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    data = b"".join(row.tobytes() + b"\0" * pad for row in rows)
    return SimpleNamespace(encoding=encoding, width=pixels.shape[1], height=pixels.shape[0],
                           step=pixels.shape[1] * pixels.itemsize + pad, data=data, is_bigendian=bigendian,
                           header=SimpleNamespace(frame_id=CAM))


def test_depth_images_16uc1_mm_and_32fc1_m_with_padding_and_byte_order():
    mm = np.arange(12, dtype=np.uint16).reshape(3, 4) * 250
    for bigendian in (False, True):
        image = depth_from_image(image_msg(mm, "16UC1", pad=4, bigendian=bigendian), 5)
        np.testing.assert_array_equal(image.pixels, mm)
        assert image.scale == 1e-3 and image.stamp_ns == 5 and image.frame_id == CAM
    metres = mm.astype(np.float32) / 1000
    image = depth_from_image(image_msg(metres, "32FC1"), 5)
    np.testing.assert_array_equal(image.pixels * image.scale, metres)
    with pytest.raises(ValueError, match="16UC1 in mm or 32FC1"):
        depth_from_image(image_msg(mm.astype(np.uint8), "mono8"), 5)
    bad = image_msg(mm, "16UC1")
    bad.data = bad.data[:-2]
    with pytest.raises(ValueError, match="bytes"):
        depth_from_image(bad, 5)


def compressed_depth_msg(fmt: str, png: bytes, header=(0, 0.0, 0.0)):
    return SimpleNamespace(format=fmt, data=struct.pack("<iff", *header) + png, header=SimpleNamespace(frame_id=CAM))


def test_compressed_depth_png_16uc1_32fc1_quantised_and_plain_png():
    mm = (np.arange(20, dtype=np.uint16).reshape(4, 5) + 1) * 100
    png = cv2.imencode(".png", mm)[1].tobytes()
    image = depth_from_compressed(compressed_depth_msg("16UC1; compressedDepth png", png), 1)
    np.testing.assert_array_equal(image.pixels, mm)
    # 32FC1: inverse depth quantised as in compressed_depth_image_transport (A / (q - B))
    depth_quant_a, depth_quant_b = 100.0 * (100.0 + 1), 100.0
    metres = np.array([[0.5, 1.0], [2.0, np.nan]], np.float32)
    q = np.where(np.isnan(metres), 0, depth_quant_a / np.nan_to_num(metres, nan=1.0) + depth_quant_b).astype(np.uint16)
    msg = compressed_depth_msg("32FC1; compressedDepth png", cv2.imencode(".png", q)[1].tobytes(),
                               (0, depth_quant_a, depth_quant_b))
    image = depth_from_compressed(msg, 1)
    decoded = image.pixels * image.scale
    np.testing.assert_allclose(decoded[~np.isnan(metres)], metres[~np.isnan(metres)], rtol=1e-3)
    assert np.isnan(decoded[1, 1])
    plain = SimpleNamespace(format="16UC1; png", data=png, header=SimpleNamespace(frame_id=CAM))
    np.testing.assert_array_equal(depth_from_compressed(plain, 1).pixels, mm)
    rvl = compressed_depth_msg("16UC1; compressedDepth rvl", b"\1" * 40, (1, 0.0, 0.0))
    with pytest.raises(ValueError, match="RVL"):
        depth_from_compressed(rvl, 1)
    with pytest.raises(ValueError, match="not a single-channel 16-bit PNG"):
        depth_from_compressed(compressed_depth_msg("16UC1; compressedDepth png", b"not a png"), 1)


def test_depth_units_against_values_self_check():
    """16UC1 is millimetres and 32FC1 metres: values that look like the other unit are
    named with the fix; an image with no valid pixel cannot tell."""
    metres_as_16uc1 = np.full((40, 40), 2, np.uint16)          # 2 m written as 2
    mm_as_32fc1 = np.full((40, 40), 1500.0, np.float32)        # 1.5 m written as 1500
    assert "16UC1 depth values look like metres" in units_problem(DepthImage(0, "c", metres_as_16uc1, 1e-3))
    assert "publish 16UC1 in millimetres or 32FC1 in metres" in units_problem(DepthImage(0, "c", metres_as_16uc1,
                                                                                         1e-3))
    assert "32FC1 depth values look like millimetres" in units_problem(DepthImage(0, "c", mm_as_32fc1, 1.0))
    assert units_problem(DepthImage(0, "c", np.full((40, 40), 1500, np.uint16), 1e-3)) == ""
    assert units_problem(DepthImage(0, "c", np.full((40, 40), 1.5, np.float32), 1.0)) == ""
    assert units_problem(DepthImage(0, "c", np.zeros((40, 40), np.uint16), 1e-3)) is None
    assert units_problem(DepthImage(0, "c", np.full((40, 40), np.nan, np.float32), 1.0)) is None


def test_robust_depth_is_the_median_of_valid_values_only():
    mm = np.full((9, 9), 1500, np.uint16)
    mm[3:6, 3:6] = [[0, 0, 65535], [1490, 1500, 0], [60000, 1520, 1510]]  # holes and far outliers
    assert robust_depth(mm, 1e-3, 4, 4, 3, 0.1, 20.0) == pytest.approx(1.505)
    metres = np.full((5, 5), np.nan, np.float32)
    assert robust_depth(metres, 1.0, 2, 2, 5, 0.1, 20.0) is None
    metres[0, 0] = 0.05  # below min
    metres[4, 4] = np.inf
    assert robust_depth(metres, 1.0, 2, 2, 5, 0.1, 20.0) is None
    metres[2, 2] = 2.0
    assert robust_depth(metres, 1.0, 2, 2, 5, 0.1, 20.0) == 2.0
    assert robust_depth(metres, 1.0, 0, 0, 3, 0.1, 20.0) is None  # window clipped at the corner


def flat(stamp_ns: int, metres: float = 2.0, size=(64, 48), frame_id: str = CAM) -> DepthImage:
    return DepthImage(stamp_ns, frame_id, np.full((size[1], size[0]), metres, np.float32), 1.0)


def test_buffer_nearest_within_tolerance_else_stale_reason():
    buffer = DepthBuffer(tolerance_s=0.02, max_bytes=10**9, recent_s=1.0, max_wanted=8)
    assert buffer.nearest(0)[1] == "no depth image received"
    for i in range(10):
        buffer.add(flat(i * NS // 30))
    image, why = buffer.nearest(5 * NS // 30 + 4_000_000)
    assert image.stamp_ns == 5 * NS // 30 and why == ""
    image, why = buffer.nearest(2 * NS)
    assert image is None and "no depth image within 0.02 s" in why and "stale" in why


def test_buffer_keeps_recent_images_and_those_the_window_wants_and_is_memory_bounded():
    per_image = flat(0).nbytes
    buffer = DepthBuffer(tolerance_s=0.02, max_bytes=40 * per_image, recent_s=0.2, max_wanted=4)
    kept_for = []
    for i in range(300):  # 10 s at 30 Hz; the window keeps a frame every 0.5 s
        stamp = i * NS // 30
        if i % 15 == 0:
            buffer.want(stamp + 5_000_000)   # the colour frame's stamp, 5 ms off the depth
            kept_for.append(stamp + 5_000_000)
        buffer.add(flat(stamp))
    frames, nbytes = buffer.stats()
    assert frames == 7 + 4  # 0.2 s at 30 Hz (7) + the 4 newest wanted
    assert nbytes == frames * per_image
    for stamp in kept_for[-4:]:
        assert buffer.nearest(stamp)[0] is not None
    assert buffer.nearest(kept_for[-5])[0] is None  # forgotten: only max_wanted are kept
    small = DepthBuffer(tolerance_s=0.02, max_bytes=3 * per_image, recent_s=1.0, max_wanted=4)
    for i in range(30):
        small.add(flat(i * NS // 30))
    assert small.stats() == (3, 3 * per_image)


def scene(distortion=(0.0,) * 5, seed_from: int = 0):
    """A static 320x240 shapes clip with a camera; the first seed whose first object is
    large enough to hold a 5x5 patch at its centre."""
    for seed in range(seed_from, seed_from + 50):
        clip = make_clip(seed, n_frames=1, size=(320, 240), n_objects=3, size_range=(0.15, 0.2),
                         speed_range=(0.0, 0.0))
        cam = default_camera(clip.size)
        cam = CameraModel(**{**cam.__dict__, "d": distortion})
        depth_scene = DepthScene(clip, cam)
        o = clip.objects[0][0]
        if depth_scene.flat(0, o.cx, o.cy, 6):
            return depth_scene, o
    raise AssertionError("no seed with a flat patch")


@pytest.mark.parametrize("distortion,depth_size", [((0.0,) * 5, (320, 240)), (PLUMB_BOB, (320, 240)),
                                                    (PLUMB_BOB, (160, 120)), ((0.0,) * 5, (80, 60))])
def test_points_on_shapes_at_known_depth_within_one_percent(distortion, depth_size):
    depth_scene, obj = scene(distortion)
    cam = depth_scene.camera
    buffer = DepthBuffer(tolerance_s=0.05, max_bytes=10**9, recent_s=1.0, max_wanted=4)
    mm = np.round(depth_scene.depth_m(0, depth_size) * 1000).astype(np.uint16)
    buffer.add(DepthImage(1000, CAM, mm, 1e-3))
    for x, y in ((obj.cx, obj.cy), (12.3, 8.9), (300.0, 230.0)):  # on the object, background corners
        position, why = locate(x, y, 1000 + 10_000_000, CAM, (320, 240), cam, buffer, DepthLookup())
        truth = depth_scene.truth(0, x, y)
        assert why == ""
        assert np.linalg.norm(np.array(position) - truth) <= 0.01 * truth[2], (x, y, position, truth)


def test_every_reason_for_no_position():
    cam = default_camera((320, 240), CAM)
    buffer = DepthBuffer(tolerance_s=0.05, max_bytes=10**9, recent_s=1.0, max_wanted=4)
    lookup = DepthLookup()

    def why(camera=cam, frame_id=CAM, stamp=NS, size=(320, 240)):
        position, reason = locate(160, 120, stamp, frame_id, size, camera, buffer, lookup)
        assert position is None
        return reason

    assert why(camera=None) == "no camera info received"
    assert why() == "no depth image received"
    assert "camera info frame_id 'camera_optical_frame' is not the camera's 'other'" in why(frame_id="other")
    assert "camera info size 320x240 has another aspect ratio than the colour image 320x180" in why(size=(320, 180))
    buffer.add(flat(NS - 300_000_000, size=(320, 240)))
    assert "nearest 0.300 s away" in why()
    buffer.add(flat(NS, size=(320, 180)))
    assert "depth size 320x180 has another aspect ratio" in why()
    buffer.add(flat(NS + 1, frame_id="camera_depth_optical_frame", size=(320, 240)))
    assert "depth frame_id 'camera_depth_optical_frame' is not the colour camera's" in why(stamp=NS + 1)
    buffer.add(flat(NS + 2, metres=0.0, size=(320, 240)))
    assert "no valid depth in the 5x5 depth pixels around (160, 120)" in why(stamp=NS + 2)
    buffer.add(flat(NS + 3, metres=2.0, size=(320, 240)))
    position, reason = locate(160, 120, NS + 3, CAM, (320, 240), cam, buffer, lookup)
    assert reason == "" and position[2] == 2.0 and abs(position[0]) < 1e-12  # the principal point
    position, _ = locate(192, 120, NS + 3, CAM, (320, 240), cam, buffer, lookup)
    assert math.isclose(position[0], 2.0 * 32 / 320)


def test_with_positions_places_points_and_track_points_and_says_why_not():
    def find(x, y, stamp_ns):
        if x < 100:
            return (x, y, 1.0), ""
        return None, f"no depth image within 0.05 s of the frame (nearest {stamp_ns} s away)"

    p = [GroundedPoint(i, 50.0 + 60 * i, 10.0, 1, "cup") for i in range(3)]
    g = with_positions(Grounding(task=Task.TRACK, query="cup", points=p, tracks=[Track(1, "cup", p)],
                                 warnings=["parser said"]), find)
    assert [q.position for q in g.points] == [(50.0, 10.0, 1.0), None, None]
    assert [q.position for q in g.tracks[0].points] == [(50.0, 10.0, 1.0), None, None]
    # the track's points are the answer's: found and counted once
    assert g.warnings == ["parser said", "3D: 2 points without a position: no depth image within 0.05 s "
                                         "of the frame (nearest 1 s away)"]


def test_positions_survive_the_json_form():
    from molmo2_ros.core.grounder import grounding_from_dict, grounding_to_dict

    g = Grounding(task=Task.POINT, query="cup", points=[GroundedPoint(1, 2.0, 3.0, 1, "cup", position=(0.1, -0.2, 1.5)),
                                                        GroundedPoint(1, 9.0, 3.0, 2, "cup")])
    back = grounding_from_dict(grounding_to_dict(g))
    assert [p.position for p in back.points] == [(0.1, -0.2, 1.5), None]
    g.target_frame, g.points[0] = "base_link", GroundedPoint(1, 2.0, 3.0, 1, "cup", position=(0.1, -0.2, 1.5),
                                                             target_position=(1.0, 2.0, 0.5))
    back = grounding_from_dict(grounding_to_dict(g))
    assert back.target_frame == "base_link"
    assert [p.target_position for p in back.points] == [(1.0, 2.0, 0.5), None]


# --- hostile input (issue 28) -------------------------------------------------------------

@pytest.mark.parametrize("change,reason", [
    ({"cx": math.nan}, "non-finite principal point"), ({"cy": math.inf}, "non-finite principal point"),
    ({"fx": math.inf}, "not calibrated"), ({"fy": math.nan}, "not calibrated"), ({"fx": -1.0}, "not calibrated"),
    ({"d": (0.1, math.nan, 0.0, 0.0, 0.0)}, "non-finite distortion"),
    ({"d": (0.1, 0.0, 0.0, 0.0, -math.inf)}, "non-finite distortion"),
    ({"d": RATIONAL}, "plumb_bob has 5 coefficients, D has 8"),
    ({"distortion_model": "rational_polynomial", "d": PLUMB_BOB}, "rational_polynomial has 8 coefficients, D has 5"),
    ({"distortion_model": "", "d": PLUMB_BOB}, "'' is not supported"),
    ({"distortion_model": "equidistant", "d": (0.0,) * 4}, "'equidistant' is not supported"),
])
def test_camera_info_with_non_finite_values_or_a_distortion_unfit_for_its_model_is_refused(change, reason):
    fields = {**camera("plumb_bob", PLUMB_BOB).__dict__, **change}
    info = SimpleNamespace(width=640, height=480, distortion_model=fields["distortion_model"], d=list(fields["d"]),
                           k=[fields["fx"], 0, fields["cx"], 0, fields["fy"], fields["cy"], 0, 0, 1],
                           header=SimpleNamespace(frame_id=CAM))
    with pytest.raises(ValueError, match=reason):
        CameraModel.from_camera_info(info)


def test_a_camera_model_that_overflows_gives_no_position_never_a_non_finite_one():
    extreme = CameraModel(640, 480, 1e-307, 1e-307, 319.5, 239.5, frame_id=CAM)   # rays overflow
    buffer = DepthBuffer(tolerance_s=0.05, max_bytes=10**9, recent_s=1.0, max_wanted=4)
    buffer.add(flat(NS, size=(640, 480)))
    position, why = locate(600.0, 400.0, NS, CAM, (640, 480), extreme, buffer, DepthLookup())
    assert position is None and "no finite position" in why


def png16(width: int, height: int, colour_type: int = 0, bit_depth: int = 16) -> bytes:
    """A PNG whose header declares width x height (its one IDAT row is all there is: a
    decoder would fail, so a refusal naming the size proves nothing was decoded)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1 + 2 * width)))
            + chunk(b"IEND", b""))


def test_depth_images_over_the_pixel_or_byte_bound_are_refused_before_decoding():
    from molmo2_ros.core.image_conversion import ImageTooLarge

    bomb = compressed_depth_msg("16UC1; compressedDepth png", png16(30000, 30000))
    with pytest.raises(ImageTooLarge, match="30000x30000 = 900000000 pixels, more than max_image_pixels"):
        depth_from_compressed(bomb, 1)
    with pytest.raises(ImageTooLarge, match="more than depth_buffer_mb 1"):   # 4000x3000 x 2 bytes = 22.9 MiB
        depth_from_compressed(compressed_depth_msg("16UC1; compressedDepth png", png16(4000, 3000)), 1,
                              max_bytes=2**20)
    # 32FC1 decodes to 4 bytes a pixel: 600x500 x 4 > 1 MiB although x 2 would fit
    with pytest.raises(ImageTooLarge, match="more than depth_buffer_mb 1"):
        depth_from_compressed(compressed_depth_msg("32FC1; compressedDepth png", png16(600, 500)), 1, max_bytes=2**20)
    for colour_type, bit_depth in ((0, 8), (2, 16), (6, 16)):   # grey 8-bit, RGB, RGBA: not a depth PNG
        with pytest.raises(ValueError, match="not a single-channel 16-bit PNG"):
            depth_from_compressed(compressed_depth_msg("16UC1; compressedDepth png",
                                                       png16(64, 48, colour_type, bit_depth)), 1)
    raw = SimpleNamespace(encoding="16UC1", width=10000, height=7500, step=20000, data=b"", is_bigendian=False,
                          header=SimpleNamespace(frame_id=CAM))
    with pytest.raises(ImageTooLarge, match="10000x7500 = 75000000 pixels, more than max_image_pixels"):
        depth_from_image(raw, 1)
    with pytest.raises(ImageTooLarge, match="143.1 MiB, more than depth_buffer_mb 128"):
        depth_from_image(raw, 1, max_pixels=10**9)


def test_the_buffer_bound_holds_for_one_image_larger_than_it():
    per_image = flat(0).nbytes
    buffer = DepthBuffer(tolerance_s=0.02, max_bytes=3 * per_image, recent_s=1.0, max_wanted=4)
    buffer.add(flat(0))
    big = flat(NS // 30, size=(128, 96))
    assert "refused as too large" in buffer.add(big)
    assert buffer.stats() == (1, per_image) and buffer.refused == 1
    image, why = buffer.nearest(NS // 30)
    assert image is None and why.startswith("the depth image of the frame was refused as too large (")


def stamps_held(buffer: DepthBuffer) -> list[int]:
    return [image.stamp_ns for image in buffer._images]


def test_one_wild_depth_stamp_costs_only_itself():
    buffer = DepthBuffer(tolerance_s=0.02, max_bytes=10**9, recent_s=100.0, max_wanted=4,
                         jump_back_s=1.0, jump_ahead_s=10.0)
    step = NS // 10
    for i in range(10):
        assert buffer.add(flat(100 * NS + i * step)) == ""
    before = stamps_held(buffer)
    assert "jumped ahead 10.100 s" in buffer.add(flat(before[-1] + 10 * NS + step))   # +10.1 s: held back
    assert buffer.add(flat(before[-1] + step)) == ""                                   # not confirmed
    assert "jumped back 100.100 s" in buffer.add(flat(before[-1] - 100 * NS))        # -100 s: held back
    assert buffer.add(flat(before[-1] + 2 * step)) == ""
    assert stamps_held(buffer) == before + [before[-1] + step, before[-1] + 2 * step]
    image, why = buffer.nearest(before[-1] - 100 * NS)
    assert image is None
    assert why == "the depth image of the frame was refused as a stamp jump the next image did not confirm"
    # slightly late: put in its place; a duplicate: ignored
    assert buffer.add(flat(before[-1] + step // 2)) == ""
    assert "duplicate stamp" in buffer.add(flat(before[-1] + step))
    assert stamps_held(buffer) == sorted(set(stamps_held(buffer))) and len(stamps_held(buffer)) == 13
    # a jump ahead of exactly jump_ahead_s is taken; the stream going on confirms the jump
    # back from it: the one image from the future goes, the rest stays
    newest = stamps_held(buffer)[-1]
    buffer.add(flat(newest + 10 * NS))
    assert "jumped back" in buffer.add(flat(newest + step))
    assert "confirmed by the next image): 1 later depth images dropped" in buffer.add(flat(newest + 2 * step))
    assert stamps_held(buffer)[-3:] == [newest, newest + step, newest + 2 * step] and len(stamps_held(buffer)) == 15
    assert buffer.nearest(newest + 10 * NS)[1] == \
        "the depth image of the frame was dropped when the depth stamps jumped back"


def test_a_bag_restart_is_a_confirmed_jump_back_that_empties_the_buffer():
    buffer = DepthBuffer(tolerance_s=0.02, max_bytes=10**9, recent_s=100.0, max_wanted=4)
    for i in range(5):
        buffer.add(flat(50 * NS + i * NS // 10))
    assert "held back" in buffer.add(flat(NS))
    assert "confirmed by the next image): 5 later depth images dropped" in buffer.add(flat(NS + NS // 10))
    assert stamps_held(buffer) == [NS, NS + NS // 10]


def test_a_lookup_that_misses_names_the_true_reason():
    per_image = flat(0).nbytes
    buffer = DepthBuffer(tolerance_s=0.02, max_bytes=10**9, recent_s=0.2, max_wanted=2)
    buffer.refuse(None, "dropped as malformed (malformed stamp: nanosec 1000000000 is not < 1e9 (sec 1))")
    assert buffer.nearest(NS)[1] == ("no usable depth image received (the newest was dropped as malformed "
                                     "(malformed stamp: nanosec 1000000000 is not < 1e9 (sec 1)))")
    buffer.add(flat(NS))
    buffer.refuse(2 * NS, "dropped as malformed (depth step 3 does not fit width 64 x 2 bytes)")
    assert buffer.nearest(2 * NS)[1].startswith("the depth image of the frame was dropped as malformed (depth step")
    # the newest message refused, no stamp to tell which frame it was: said beside "stale"
    buffer.refuse(None, "dropped as malformed (bad stamp)")
    assert buffer.nearest(3 * NS)[1] == ("no depth image within 0.02 s of the frame (nearest 2.000 s away: the "
                                         "newest depth message was dropped as malformed (bad stamp))")
    buffer.add(flat(3 * NS))
    assert "depth stale or not synchronised" in buffer.nearest(5 * NS)[1]
    # depth kept for the window's frames until the answer is ready, evicted when a slow
    # answer's frames are pushed out by newer kept frames
    buffer.want(3 * NS)
    for k in range(1, 4):
        buffer.add(flat(3 * NS + k * NS // 2))
        buffer.want(3 * NS + k * NS // 2)
    buffer.add(flat(5 * NS))
    assert buffer.nearest(3 * NS)[1].startswith("the depth image of the frame was evicted by the node before the "
                                                "answer was ready (the buffer keeps depth for the 2 newest kept "
                                                "frames)")
    small = DepthBuffer(tolerance_s=0.02, max_bytes=2 * per_image, recent_s=10.0, max_wanted=2)
    for i in range(3):
        small.add(flat(i * NS // 10))
    assert small.nearest(0)[1] == (f"the depth image of the frame was evicted by the node (depth_buffer_mb "
                                   f"{2 * per_image / 2**20:g} full)")


def test_refused_camera_info_is_the_reason_given():
    buffer = DepthBuffer(tolerance_s=0.02, max_bytes=10**9, recent_s=1.0, max_wanted=4)
    position, why = locate(1, 1, NS, CAM, (640, 480), None, buffer, DepthLookup(),
                           no_camera="camera info refused (camera info has a non-finite principal point)")
    assert position is None and why == "camera info refused (camera info has a non-finite principal point)"
