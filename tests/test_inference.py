import numpy as np
import pytest
import torch

from conftest import small_checkpoint_state as small_state
from pointcell.errors import PointcellInputError
from pointcell.inference import (
    Predictor,
    adapt_batchnorm,
    blend_weights,
    load_predictor,
    predict_image,
    predict_probability,
    predictor_from_state,
    tile_starts,
)
from pointcell.io.checkpoints import CHECKPOINT_VERSION, save_checkpoint
from pointcell.postprocess import PostprocessParams


class PixelwiseNet(torch.nn.Module):
    """A network without spatial context: tiling cannot change its output anywhere."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x)


def cpu_predictor(net: torch.nn.Module, source: str) -> Predictor:
    """``net`` on the CPU in fp32, reading images normalised by mean 0.5 and std 0.25 at 0.5
    µm/px."""
    return Predictor(
        net.eval(),
        [0.5] * 3,
        [0.25] * 3,
        0.5,
        PostprocessParams(),
        torch.device("cpu"),
        None,
        source,
    )


def pixelwise_predictor():
    return cpu_predictor(PixelwiseNet(), "test")


def test_tile_starts_cover_the_image():
    assert tile_starts(100, 128, 96) == [0]
    assert tile_starts(320, 128, 96) == [0, 96, 192]
    assert tile_starts(300, 128, 64) == [0, 64, 128, 172]


def test_blend_weights_ramp_between_margin_and_centre():
    w = blend_weights(256, 64)
    assert w[0] == w[31] == pytest.approx(1e-3)
    assert 0 < w[32] < w[63] < 1 and w[64] == w[191] == 1 and w[-1] == pytest.approx(1e-3)
    assert (blend_weights(64, 0) == 1).all()


@pytest.mark.parametrize(("tile", "overlap"), [(64, 32), (96, 64), (128, 32), (512, 128)])
def test_tiling_is_exact_for_a_network_without_context(tile, overlap):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(150, 210, 3), dtype=np.uint8)
    predictor = pixelwise_predictor()
    tiled = predict_probability(predictor, image, tile=tile, overlap=overlap, batch_size=3)
    whole = predict_probability(predictor, image, tile=512, overlap=0)
    assert tiled.shape == (150, 210)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_one_tile_equals_whole_image_inference():
    predictor = predictor_from_state(small_state(), device="cpu", precision="fp32")
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, size=(90, 120, 3), dtype=np.uint8)
    tiled = predict_probability(predictor, image, tile=256, overlap=64)
    padded = np.pad(image, ((0, 6), (0, 8), (0, 0)), mode="reflect")  # to multiples of 32
    tensor = (torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
    with torch.inference_mode():
        direct = torch.softmax(predictor.model(tensor), 1)[0, 1].numpy()[:90, :120]
    np.testing.assert_allclose(tiled, direct, atol=1e-5)


class LeftToRightNet(torch.nn.Module):
    """Nucleus logit = horizontal brightness gradient: an orientation-dependent network."""

    def forward(self, x):
        gradient = torch.nn.functional.pad(x.sum(1, keepdim=True), (1, 1, 0, 0))
        gradient = gradient[..., 2:] - gradient[..., :-2]
        return torch.cat([torch.zeros_like(gradient), gradient], dim=1)


def test_tta_makes_the_prediction_follow_rotations_and_mirrors():
    predictor = pixelwise_predictor()
    predictor.model = LeftToRightNet()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)

    def maps(img, tta):
        return predict_probability(predictor, img, tile=512, overlap=0, tta=tta)

    turned = np.ascontiguousarray(np.rot90(image))
    mirrored = np.ascontiguousarray(image[:, ::-1])
    np.testing.assert_allclose(maps(turned, True), np.rot90(maps(image, True)), atol=1e-5)
    np.testing.assert_allclose(maps(mirrored, True), maps(image, True)[:, ::-1], atol=1e-5)
    assert np.abs(maps(turned, False) - np.rot90(maps(image, False))).max() > 0.1


def test_tta_leaves_an_orientation_free_network_unchanged():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, size=(100, 140, 3), dtype=np.uint8)
    predictor = pixelwise_predictor()
    plain = predict_probability(predictor, image, tile=64, overlap=32)
    averaged = predict_probability(predictor, image, tile=64, overlap=32, tta=True)
    np.testing.assert_allclose(averaged, plain, atol=1e-6)


def test_predict_image_returns_the_input_size():
    predictor = pixelwise_predictor()
    image = np.full((101, 68, 3), 40, np.uint8)
    image[:, 34:] = 220  # a dark left half, a light right half
    probability = predict_image(predictor, image, mpp=0.25)  # half size to the network
    assert probability.shape == (101, 68)
    left = predict_probability(predictor, image[:8, :8], tile=64, overlap=0)[0, 0]
    right = predict_probability(predictor, image[:8, -8:], tile=64, overlap=0)[0, 0]
    assert abs(left - right) > 0.01  # the halves differ, so the edge can be located
    np.testing.assert_allclose(probability[:, :30], left, atol=1e-5)
    np.testing.assert_allclose(probability[:, 38:], right, atol=1e-5)


def test_bad_tiling_arguments():
    with pytest.raises(ValueError, match="multiples of 32"):
        predict_probability(pixelwise_predictor(), np.zeros((64, 64, 3), np.uint8), tile=100)


def test_model_loading_errors(tmp_path):
    with pytest.raises(PointcellInputError, match="no such model"):
        load_predictor(tmp_path / "missing.pt")
    with pytest.raises(PointcellInputError, match="holds no best.pt"):
        load_predictor(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(PointcellInputError, match="corrupt or truncated"):
        load_predictor(tmp_path / "junk.pt")
    torch.save(
        {"format": "pointcell-checkpoint", "format_version": CHECKPOINT_VERSION + 1},
        tmp_path / "future.pt",
    )
    with pytest.raises(PointcellInputError, match="format version 2 is not supported"):
        load_predictor(tmp_path / "future.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(PointcellInputError, match="not a pointcell checkpoint"):
        load_predictor(tmp_path / "other.pt")
    broken = small_state()
    broken["model"] = {"nonsense": torch.zeros(1)}
    save_checkpoint(tmp_path / "broken.pt", broken)
    with pytest.raises(PointcellInputError, match="does not hold a usable model"):
        load_predictor(tmp_path / "broken.pt")


def test_run_folder_loads_best_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "best.pt", small_state())
    predictor = load_predictor(tmp_path, device="cpu")
    assert predictor.source.endswith("best.pt") and predictor.working_mpp == 0.5


@pytest.mark.parametrize("tile", [256, 384])
def test_tile_size_barely_changes_the_shipped_model(sample, tile):
    """A real U-Net sees other context near seams, so tilings agree within a tolerance, not
    bit for bit. With the default 128 px overlap, against one whole-image pass (measured:
    256 px tiles max |dp| 0.014, 0.02% of mask pixels flipped; 384 px tiles max 0.002)."""
    from pointcell.io.images import read_image
    from pointcell.metrics import detection_scores
    from pointcell.postprocess import postprocess
    from pointcell.targets import resample

    crops = [read_image(p).pixels for p in sorted((sample / "images").glob("*.tif"))]
    rows = [np.concatenate([crops[(i + j) % 2] for j in range(4)], axis=1) for i in range(4)]
    working, _ = resample(np.concatenate(rows, axis=0), np.zeros((0, 2)), 0.5)  # 512² px
    predictor = load_predictor("pointcell-he", device="cpu", precision="fp32")
    whole = predict_probability(predictor, working, tile=512, overlap=0)
    tiled = predict_probability(predictor, working, tile=tile, overlap=128)
    difference = np.abs(tiled - whole)
    assert difference.max() < 0.05 and difference.mean() < 1e-3
    assert ((tiled > 0.5) != (whole > 0.5)).mean() < 1e-3
    cells_whole = postprocess(whole, mpp=0.5, params=predictor.postprocess)
    cells_tiled = postprocess(tiled, mpp=0.5, params=predictor.postprocess)
    assert detection_scores(cells_whole.xy, cells_tiled.xy, radius=1.0).f1 >= 0.99


def batchnorm_predictor() -> Predictor:
    """A network that is one batch-norm layer over the normalised RGB input."""
    return cpu_predictor(torch.nn.BatchNorm2d(3), "bn")


def test_adapted_batchnorm_statistics_are_those_of_the_images():
    # two flat 64 x 64 images, one tile each: normalised values (v/255 - 0.5) / 0.25
    dark = np.full((64, 64, 3), (51, 102, 153), np.uint8)  # -> -1.2, -0.4, 0.4
    light = np.full((64, 64, 3), (204, 153, 255), np.uint8)  # -> 1.2, 0.4, 2.0
    original = batchnorm_predictor()
    adapted = adapt_batchnorm(original, [(dark, 0.5), (light, 0.5)], batch_size=1)
    norm = adapted.model
    # the average of the two batch means; each flat batch has variance 0
    assert norm.running_mean.tolist() == pytest.approx([0.0, 0.0, 1.2], abs=1e-5)
    assert norm.running_var.tolist() == pytest.approx([0.0] * 3, abs=1e-6)
    assert not norm.training and adapted.source == "bn (AdaBN)"
    # the predictor given is left as it was
    assert original.model.running_mean.tolist() == [0.0] * 3
    assert original.model.running_var.tolist() == [1.0] * 3


def test_adapted_batchnorm_pools_tiles_of_one_batch():
    # one image, two tiles side by side in one batch: its statistics are the pixels' own
    image = np.zeros((64, 128, 3), np.uint8)
    image[:, 64:] = 255  # normalised: -2 on the left, +2 on the right
    adapted = adapt_batchnorm(batchnorm_predictor(), [(image, 0.5)], tile=64, batch_size=2)
    assert adapted.model.running_mean.tolist() == pytest.approx([0.0] * 3, abs=1e-5)
    n = 2 * 64 * 64  # unbiased variance of n/2 values at -2 and n/2 at +2
    assert adapted.model.running_var.tolist() == pytest.approx([4 * n / (n - 1)] * 3, rel=1e-5)


def test_adapted_batchnorm_resamples_to_the_working_pixel_size():
    # a 0.25 µm/px image is halved to 32 x 32 px before it is seen: still one flat tile
    image = np.full((64, 64, 3), (51, 102, 153), np.uint8)
    adapted = adapt_batchnorm(batchnorm_predictor(), [(image, 0.25)])
    assert adapted.model.running_mean.tolist() == pytest.approx([-1.2, -0.4, 0.4], abs=2e-2)


def test_adapting_a_unet_changes_its_maps_but_not_its_weights():
    predictor = predictor_from_state(small_state(), device="cpu", precision="fp32")
    image = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    adapted = adapt_batchnorm(predictor, [(image, 0.5)])
    before, after = predictor.model.state_dict(), adapted.model.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    weights = [k for k in before if k not in stats and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(before[k], after[k]) for k in weights)
    plain = predict_probability(predictor, image)
    assert plain.shape == predict_probability(adapted, image).shape == (96, 96)
    assert not np.allclose(plain, predict_probability(adapted, image))


def test_adapting_needs_batchnorm_layers_and_images():
    with pytest.raises(PointcellInputError, match="no batch-norm"):
        adapt_batchnorm(pixelwise_predictor(), [(np.zeros((32, 32, 3), np.uint8), 0.5)])
    with pytest.raises(PointcellInputError, match="at least one image"):
        adapt_batchnorm(batchnorm_predictor(), [])
