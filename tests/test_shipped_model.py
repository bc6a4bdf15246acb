"""The model shipped in the package works on the bundled sample.

Measured when the model was exported (pointcell-he, ResNet18 U-Net, 3,000 CPU steps on the 14
Kumar training images): AJI 0.411, object Dice 0.620, detection F1 0.755 on the two sample
crops (whose source images were among the training images; their masks never were). The
thresholds leave a margin; an untrained network scores AJI 0.13, Dice 0.27 and detection
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
    assert scores["aji"] >= 0.35, scores
    assert scores["det_f1"] >= 0.65, scores
    assert scores["dice"] >= 0.55, scores
