"""The overlay picture: enlarged when small, contrast from its own percentiles, labels that do not overlap."""

import numpy as np

from spinedet.runtime.overlay import BOX_COLOUR, display_scale, grey_8bit, label_spots, overlay_rgb
from spinedet.runtime.spines import Spine


def _spine(spine_id, box, score=0.93):
    box = np.asarray(box, dtype=np.float64)
    return Spine(spine_id, (0,), box[None], np.array([score]), 0, 0, box, score, (0, 0, 0), None, 0.0, 0.0)


def test_small_images_are_enlarged_and_boxes_drawn_where_they_are():
    assert display_scale((128, 128)) == 8 and display_scale((512, 512)) == 2 and display_scale((2048, 2048)) == 1
    rgb = overlay_rgb(np.random.default_rng(0).random((128, 128)), [_spine(1, [40, 50, 52, 60])])
    assert rgb.shape == (1024, 1024, 3)
    yellow = (rgb == BOX_COLOUR).all(axis=2)
    assert yellow[50 * 8:60 * 8, 40 * 8].all() and yellow[50 * 8, 40 * 8:52 * 8].all()  # left and top edges
    assert not yellow[55 * 8, 46 * 8]  # inside the box: the image, not paint


def test_contrast_ignores_a_few_saturated_pixels():
    image = np.full((256, 256), 100.0)
    image[100:110, :] = 400.0  # a dendrite
    image[0:3, 0:3] = 60000.0  # a few saturated pixels (a soma, a hot pixel)
    grey = grey_8bit(image)
    assert grey[105, 50] == 255 and grey[50, 50] == 0  # the dendrite is white, not a dim grey
    assert grey_8bit(np.zeros((8, 8))).max() == 0  # a blank image stays black


def test_labels_of_crowded_spines_do_not_overlap():
    boxes = [(100 + 6 * k, 100, 130 + 6 * k, 130) for k in range(5)]  # five spines side by side
    texts = [str(k + 10) for k in range(5)]
    spots = label_spots(boxes, texts, 2, (1024, 1024, 3))
    for i, a in enumerate(spots):
        for b in spots[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_scores_are_written_when_asked():
    image = np.random.default_rng(1).random((128, 128))
    plain = overlay_rgb(image, [_spine(7, [40, 50, 52, 60])])
    scored = overlay_rgb(image, [_spine(7, [40, 50, 52, 60])], scores=True)
    assert (scored == BOX_COLOUR).all(axis=2).sum() > (plain == BOX_COLOUR).all(axis=2).sum()
