"""The model shipped in the package works on the bundled sample.

Measured when the model was exported (pointcell-he, ResNet18 U-Net, 2,750 CPU steps on the
points of all 30 MoNuSeg images): AJI 0.384, object Dice 0.598, detection F1 0.686 on the two
sample crops (whose source images were among the training images; their masks never were).
The thresholds leave a margin; an untrained network scores AJI 0.13, Dice 0.27 and detection
F1 0.42 there (measured).
"""

from pointcell.evaluate import evaluate
from pointcell.inference import load_predictor
from pointcell.predict import predict_images
from pointcell.pretrained import DEFAULT_MODEL


def test_shipped_model_segments_the_sample(sample, tmp_path):
    predictor = load_predictor(DEFAULT_MODEL, device="cpu")
    assert predictor.working_mpp == 0.5
    predict_images(predictor, [sample / "images"], tmp_path, overlay=False, progress=False)
    scores = evaluate(tmp_path, sample / "masks").aggregate
    assert scores["aji"] >= 0.33, scores
    assert scores["det_f1"] >= 0.62, scores
    assert scores["dice"] >= 0.53, scores


def test_shipped_ki67_model_scores_brown_nuclei_positive(tmp_path):
    """pointcell-ki67 on a synthetic IHC field: DAB-brown nuclei are called positive,
    hematoxylin-blue ones negative (an untrained or H&E model cannot do this)."""
    import numpy as np

    from conftest import make_disks
    from pointcell.inference import predict_image_maps
    from pointcell.postprocess import classify, postprocess

    predictor = load_predictor("pointcell-ki67", device="cpu")
    assert {"positive", "negative"} <= set(predictor.classes)
    rng = np.random.default_rng(0)
    centres = [(x, y) for x in range(40, 400, 60) for y in range(40, 400, 60)]
    positive = rng.random(len(centres)) < 0.5
    tile = make_disks(centres, shape=(440, 440), radius=14.0, mpp=0.25, noise=3.0)
    image = np.full((440, 440, 3), (225, 220, 200), np.uint8)  # pale counterstained stroma
    for label, is_positive in enumerate(positive, start=1):
        image[tile.truth == label] = (120, 75, 45) if is_positive else (95, 95, 160)
    maps = predict_image_maps(predictor, image, mpp=0.25)
    cells = classify(
        postprocess(maps[0], mpp=0.25, params=predictor.postprocess), maps[1:], mpp=0.25
    )
    called = {}
    for (x, y), index in zip(cells.xy, cells.class_index, strict=True):
        nearest = int(np.argmin(np.hypot(*(np.array(centres) - (x, y)).T)))
        if np.hypot(*(np.array(centres[nearest]) - (x, y))) < 8:
            called[nearest] = predictor.classes[index]
    assert len(called) >= 0.8 * len(centres)
    correct = [called[i] == ("positive" if positive[i] else "negative") for i in called]
    assert np.mean(correct) >= 0.8, called
