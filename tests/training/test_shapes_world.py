import numpy as np
import pytest

from molmo2_ros.sim.shapes_world import COLORS, _inside, make_clip, make_image


def test_deterministic_and_annotations_match_pixels():
    a = make_clip(7, n_frames=6, fps=4.0, size=(140, 100), n_objects=3, n_occluders=1,
                  start_ns=10**9)
    b = make_clip(7, n_frames=6, fps=4.0, size=(140, 100), n_objects=3, n_occluders=1,
                  start_ns=10**9)
    assert all((x == y).all() for x, y in zip(a.frames, b.frames))
    assert a.stamps_ns == [10**9 + i * 250_000_000 for i in range(6)]
    assert a.frames[0].shape == (100, 140, 3)
    for i, objs in enumerate(a.objects):
        assert [o.object_id for o in objs] == [1, 2, 3]
        for o in objs:
            m = a.mask(i, o.object_id)
            # every visible pixel has the object's colour; the mask agrees with bbox/hit
            assert (a.frames[i][m] == COLORS[o.color]).all()
            if o.bbox is None:
                assert not m.any()
            else:
                ys, xs = np.nonzero(m)
                assert (xs.min(), ys.min(), xs.max(), ys.max()) == o.bbox
                assert a.hit(i, o.object_id, xs[0] + 0.2, ys[0] + 0.7)


def test_motion_and_occlusion():
    clip = make_clip(1, n_frames=12, size=(120, 120), n_objects=4,
                     speed_range=(0.1, 0.2), n_occluders=1)
    xs = [objs[0].cx for objs in clip.objects]
    assert len(set(round(x, 3) for x in xs)) > 5          # it moves
    occluded = [(i, o) for i, objs in enumerate(clip.objects) for o in objs
                if o.visible_fraction < 1.0]
    assert occluded                                         # this seed has occlusion
    for i, o in occluded:
        ys, xs = np.mgrid[0:120, 0:120] + 0.5
        full = _inside(o.shape, o.cx, o.cy, o.size, xs, ys)
        hidden = full & ~clip.mask(i, o.object_id)
        assert hidden.any()
        # hidden pixels show something else: an occluder bar or another object's colour
        assert not (clip.frames[i][hidden] == COLORS[o.color]).all(axis=-1).all()
    clip2 = make_clip(2, size=(120, 120), objects=[("blue", "circle"), ("blue", "circle")])
    assert clip2.labels == ["blue circle"]


def test_image_and_bad_input():
    img = make_image(5, size=(126, 126), n_objects=1)
    assert len(img.frames) == 1
    o = img.objects[0][0]
    assert o.visible and img.hit(0, 1, o.cx, o.cy)
    with pytest.raises(ValueError):
        make_clip(0, objects=[("purple", "circle")])
    with pytest.raises(ValueError):
        make_clip(0, n_frames=0)
