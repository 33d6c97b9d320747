import numpy as np
import pytest

from dcm.data.shapes import draw_sample, make_sample, render_clip, shape_coverage
from tests.conftest import REPO
from dcm.config import load_config

pytestmark = pytest.mark.fast

CFG = load_config(REPO / "params.yaml")


def test_same_seed_same_clip_and_different_index_differs():
    a_meta, a = make_sample(3, "train", 5, CFG.data)
    b_meta, b = make_sample(3, "train", 5, CFG.data)
    _, c = make_sample(3, "train", 6, CFG.data)
    assert a_meta == b_meta and np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (CFG.data.frames, CFG.data.height, CFG.data.width, 3) and a.dtype == np.uint8


def test_object_stays_in_view_and_moves_as_stated():
    for index in range(50):
        sample = draw_sample(0, "train", index, CFG.data)
        for cx, cy in sample.centres:  # the bounding box [-r, r]² never leaves the frame
            assert sample.radius <= cx <= CFG.data.width - sample.radius + 1e-9
            assert sample.radius <= cy <= CFG.data.height - sample.radius + 1e-9
        # Rendered centroid (from pixel coverage) matches the ground truth centre to sub-pixel accuracy
        # for the symmetric shapes.
        if sample.shape in ("circle", "square", "diamond"):
            for t in (0, CFG.data.frames - 1):
                cover = shape_coverage(sample.shape, CFG.data.height, CFG.data.width, *sample.centres[t],
                                       sample.radius, sample.radius, CFG.data.shapes.supersample)
                ys, xs = np.mgrid[0:CFG.data.height, 0:CFG.data.width] + 0.5
                centre = ((xs * cover).sum() / cover.sum(), (ys * cover).sum() / cover.sum())
                assert np.allclose(centre, sample.centres[t], atol=0.15)  # 4×4 supersampling grid


def test_holdout_pairs_never_reach_train_and_val_has_them():
    heldout = set(CFG.data.shapes.holdout)
    train = [draw_sample(0, "train", i, CFG.data) for i in range(400)]
    val = [draw_sample(0, "val", i, CFG.data) for i in range(400)]
    assert not any(f"{s.colour} {s.shape}" in heldout for s in train)
    assert any(s.heldout for s in val)


def test_captions_state_the_ground_truth_with_variety():
    samples = [draw_sample(0, "train", i, CFG.data) for i in range(200)]
    for s in samples:
        assert s.colour in s.caption and s.shape in s.caption and s.background in s.caption
    assert len({s.caption.split(s.colour)[0] for s in samples}) >= 3  # several templates in use
    assert {s.direction for s in samples} == set(CFG.data.shapes.directions)


def test_colours_contrast_with_the_background():
    for i in range(200):
        s = draw_sample(0, "val", i, CFG.data)
        fg = np.asarray(CFG.data.shapes.colours[s.colour]) / 255
        bg = np.asarray(CFG.data.shapes.backgrounds[s.background]) / 255
        assert np.linalg.norm(fg - bg) >= CFG.data.shapes.min_contrast


def test_still_objects_do_not_move():
    for i in range(100):
        s = draw_sample(0, "train", i, CFG.data)
        if s.direction == "still":
            clip = render_clip(s, CFG.data, 0)
            assert all(np.array_equal(clip[0], frame) for frame in clip)
            return
    raise AssertionError("no still sample among 100 draws")
