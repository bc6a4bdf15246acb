"""The models shipped in the package work on the bundled sample.

Measured when each model was exported, on the two sample crops (whose source images were among
the training images of both H&E models; their masks never were): the default `pointcell-general`
(EfficientNet-Lite0 U-Net, 2026-12-08, after two self-training rounds) scores AJI 0.459, object
Dice 0.660, detection F1 0.655 (precision 0.930, recall 0.505; the floor's recall there is
0.457); `pointcell-he` (ResNet18 U-Net, 2,750 CPU steps on the points of all 30 MoNuSeg images)
AJI 0.439, Dice 0.647, detection F1 0.700, with outlines refined (predict's default). The
thresholds leave a margin; an untrained network scores AJI 0.13, Dice 0.27 and detection F1 0.42
there (measured).
"""

import pytest

from pointcell.evaluate import evaluate
from pointcell.inference import load_predictor
from pointcell.predict import predict_images
from pointcell.pretrained import DEFAULT_MODEL


@pytest.mark.parametrize(
    ("model", "least"),
    [
        (DEFAULT_MODEL, {"aji": 0.40, "dice": 0.58, "det_f1": 0.52}),
        ("pointcell-he", {"aji": 0.38, "dice": 0.58, "det_f1": 0.62}),
    ],
)
def test_shipped_model_segments_the_sample(sample, tmp_path, model, least):
    predictor = load_predictor(model, device="cpu")
    assert predictor.working_mpp == 0.5
    predict_images(predictor, [sample / "images"], tmp_path, overlay=False, progress=False)
    scores = evaluate(tmp_path, sample / "masks").aggregate
    assert all(scores[metric] >= value for metric, value in least.items()), scores


def test_default_model_is_calibrated_per_stain():
    """The default serves H&E and IHC: each stain has its own detection settings (tuned on
    clicked validation images of that stain), which predict --stain uses."""
    predictor = load_predictor(DEFAULT_MODEL, device="cpu")
    assert DEFAULT_MODEL == "pointcell-general"
    assert set(predictor.postprocess_by_stain) == {"he", "ihc"}
    assert predictor.postprocess_for("he") != predictor.postprocess_for("ihc")


def test_shipped_ki67_model_scores_brown_nuclei_positive():
    """pointcell-ki67 on a synthetic Ki67 field in the colours of SHIDC (medians at its clicks:
    positive nuclei (109, 69, 76), negative (143, 128, 158), background (232, 230, 199)),
    slightly blurred: the cells it finds are called positive exactly when they are brown.
    Measured (the model fine-tuned from pointcell-general, 2026-12-08): 64 of 64 nuclei found,
    all 28 brown ones positive, 35 of the 36 blue ones negative and one lymphocyte (SHIDC's
    lymphocytes have that colour and shape), which, like negative, does not count as positive.
    An untrained or class-less model cannot pass."""
    import numpy as np
    from scipy import ndimage

    from conftest import make_disks
    from pointcell.inference import predict_image_maps
    from pointcell.postprocess import classify, postprocess

    predictor = load_predictor("pointcell-ki67", device="cpu")
    assert {"positive", "negative"} <= set(predictor.classes)
    rng = np.random.default_rng(0)
    grid = [(x, y) for x in range(40, 440, 50) for y in range(40, 440, 50)]
    centres = np.array(grid, float) + rng.uniform(-5, 5, size=(len(grid), 2))
    positive = rng.random(len(centres)) < 0.5
    truth = make_disks(centres, shape=(480, 480), radius=13.0, noise=0).truth
    image = np.empty((480, 480, 3), float)
    image[:] = (232, 230, 199)
    for label, is_positive in enumerate(positive, start=1):
        image[truth == label] = (109, 69, 76) if is_positive else (143, 128, 158)
    image = ndimage.gaussian_filter(image, (1.5, 1.5, 0)) + rng.normal(0, 4, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    maps = predict_image_maps(predictor, image, mpp=0.25)
    found = postprocess(maps[0], mpp=0.25, params=predictor.postprocess)
    cells = classify(found, maps[1:], mpp=0.25)
    called = {}
    for xy, index in zip(cells.xy, cells.class_index, strict=True):
        distance = np.hypot(*(centres - xy).T)
        if distance.min() < 8:
            called[int(distance.argmin())] = predictor.classes[index]
    assert len(called) >= 0.4 * len(centres), len(called)
    correct = [(name == "positive") == positive[i] for i, name in called.items()]
    assert np.mean(correct) >= 0.9, called
    assert {"positive"} < set(called.values()) <= set(predictor.classes)
