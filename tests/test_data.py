from dataclasses import replace

import numpy as np
import pytest
import torch

from pointcell import data as data_module
from pointcell import targets as targets_module
from pointcell.data import (
    AugmentParams,
    PatchSampler,
    channel_stats,
    colour_jitter,
    proximity_target,
    sampling_weights,
    split_stems,
    with_proximity,
)
from pointcell.encodings import IGNORE, NUCLEUS, EncodingParams
from pointcell.io.pairing import pair_images_with_points
from pointcell.targets import PreparedImage, prepare_image, resample, resample_labels


def test_resample_halves_and_keeps_points_on_their_pixels():
    image = np.zeros((8, 8, 3), np.uint8)
    image[2:4, 4:6] = 200  # a 2x2 block at rows 2-3, cols 4-5; centre (x=4.5, y=2.5)
    small, xy = resample(image, np.array([[4.5, 2.5]]), 0.5)
    assert small.shape == (4, 4, 3)
    np.testing.assert_allclose(xy, [[2.0, 1.0]])
    assert small[1, 2, 0] == small.max()


def test_split_is_seeded_and_by_image():
    stems = [f"s{i}" for i in range(10)]
    split = split_stems(stems, seed=1)
    assert [len(split[k]) for k in ("train", "val", "test")] == [8, 1, 1]
    assert sorted(sum(split.values(), [])) == sorted(stems)
    assert split == split_stems(stems, seed=1)
    assert split != split_stems(stems, seed=2)
    assert split_stems(["a", "b"]) == {"train": ["a", "b"], "val": [], "test": []}
    assert len(split_stems(["a", "b", "c"])["val"]) == 1


def test_channel_stats():
    a = np.zeros((2, 2, 3), np.uint8)
    b = np.full((2, 2, 3), 255, np.uint8)
    mean, std = channel_stats([a, b])
    np.testing.assert_allclose(mean, [0.5] * 3)
    np.testing.assert_allclose(std, [0.5] * 3)


def test_encodings_are_cached_and_invalidated(disk_dataset, tmp_path, monkeypatch):
    pair = pair_images_with_points(disk_dataset / "images", disk_dataset / "points")[0]
    first = prepare_image(pair, working_mpp=0.5, params=EncodingParams(), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*-*"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("encode should not run on a cache hit")

    monkeypatch.setattr(targets_module, "encode", fail)
    again = prepare_image(pair, working_mpp=0.5, params=EncodingParams(), cache_dir=tmp_path)
    np.testing.assert_array_equal(again.cluster, first.cluster)
    with pytest.raises(AssertionError, match="cache hit"):  # a parameter changed
        prepare_image(
            pair, working_mpp=0.5, params=EncodingParams(clustering="global"), cache_dir=tmp_path
        )
    pair.points.write_text("x,y\n10,10\n")  # the points changed
    with pytest.raises(AssertionError, match="cache hit"):
        prepare_image(pair, working_mpp=0.5, params=EncodingParams(), cache_dir=tmp_path)


def test_resample_labels_keeps_label_values():
    labels = np.kron(np.array([[1, 2], [3, 70000]]), np.ones((3, 3), int))  # 6x6, four blocks
    np.testing.assert_array_equal(resample_labels(labels, (2, 2)), [[1, 2], [3, 70000]])
    np.testing.assert_array_equal(
        resample_labels(labels, (12, 12)), np.kron(labels, np.ones((2, 2)))
    )
    assert resample_labels(labels, (4, 4)).dtype == np.int32


def test_self_labels_join_the_cluster_label_and_key_the_cache(disk_dataset, tmp_path):
    import tifffile

    from pointcell.errors import PointcellInputError

    pair = pair_images_with_points(disk_dataset / "images", disk_dataset / "points")[0]
    plain = prepare_image(pair, working_mpp=1.0, params=EncodingParams())
    (tmp_path / "own").mkdir()
    with pytest.raises(PointcellInputError, match="no self-training mask"):
        prepare_image(pair, working_mpp=1.0, params=EncodingParams(), self_labels=tmp_path / "own")
    nuclei = np.zeros((96, 96), np.uint16)  # the tile's own size, twice the working one
    for index, (x, y) in enumerate(np.loadtxt(pair.points, delimiter=",", skiprows=1), 1):
        rows, cols = np.ogrid[:96, :96]
        nuclei[(rows - y) ** 2 + (cols - x) ** 2 <= 36] = index  # a disk of radius 6 per click
    tifffile.imwrite(tmp_path / "own" / f"{pair.stem}.tif", nuclei)
    own = prepare_image(
        pair,
        working_mpp=1.0,
        params=EncodingParams(),
        self_labels=tmp_path / "own",
        cache_dir=tmp_path,
    )
    assert own.cluster.shape == plain.cluster.shape == (48, 48)
    grown = (own.cluster == NUCLEUS) & (plain.cluster != NUCLEUS)
    assert grown.any()  # the model's disks (radius 3 at the working size) add nucleus pixels
    assert ((own.cluster == NUCLEUS) | (plain.cluster != NUCLEUS)).all()  # none removed
    again = prepare_image(pair, working_mpp=1.0, params=EncodingParams(), cache_dir=tmp_path)
    np.testing.assert_array_equal(again.cluster, plain.cluster)  # its own cache entry
    tifffile.imwrite(tmp_path / "own" / f"{pair.stem}.tif", nuclei[:50])
    with pytest.raises(PointcellInputError, match="self-training mask is 96x50"):
        prepare_image(pair, working_mpp=1.0, params=EncodingParams(), self_labels=tmp_path / "own")


def test_cached_encodings_are_memory_mapped_and_a_broken_cache_is_rebuilt(disk_dataset, tmp_path):
    pair = pair_images_with_points(disk_dataset / "images", disk_dataset / "points")[0]
    fresh = prepare_image(pair, working_mpp=0.5, params=EncodingParams())
    cached = prepare_image(pair, working_mpp=0.5, params=EncodingParams(), cache_dir=tmp_path)
    for name in ("image", "voronoi", "cluster", "repel"):  # returned from the disk at once
        assert isinstance(getattr(cached, name), np.memmap)
        np.testing.assert_array_equal(getattr(cached, name), getattr(fresh, name))
    assert not cached.image.flags.writeable
    np.testing.assert_array_equal(cached.point_classes, fresh.point_classes)
    (folder,) = tmp_path.glob("*-*")
    (folder / "repel.npy").write_bytes(b"not an array")
    rebuilt = prepare_image(pair, working_mpp=0.5, params=EncodingParams(), cache_dir=tmp_path)
    np.testing.assert_array_equal(rebuilt.repel, fresh.repel)
    assert isinstance(rebuilt.repel, np.memmap)  # the folder was written again
    assert not list(tmp_path.glob(".*tmp"))  # no temporary folder left behind


def test_prepare_resamples_to_the_working_pixel_size(disk_dataset):
    pair = pair_images_with_points(disk_dataset / "images", disk_dataset / "points")[0]
    prepared = prepare_image(pair, working_mpp=1.0, params=EncodingParams())
    assert prepared.image.shape == (48, 48, 3) == prepared.cluster.shape + (3,)
    clicks = np.loadtxt(pair.points, delimiter=",", skiprows=1)
    # half the pixels: pixel centres map as (x + 0.5) / 2 - 0.5
    np.testing.assert_allclose(prepared.points_xy, (clicks + 0.5) / 2 - 0.5, atol=1e-6)
    cols, rows = np.rint(prepared.points_xy).astype(int).T
    assert (prepared.cluster[rows, cols] == 1).all()  # each click sits on its nucleus
    assert prepared.image[rows, cols].mean() < prepared.image.mean() - 40  # dark disks


def labelled_image(size=64):
    """An image whose red channel encodes its cluster label, to check alignment."""
    cluster = np.zeros((size, size), np.uint8)
    cluster[10:30, 5:25] = 1
    cluster[40:50, 40:60] = IGNORE
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = cluster * 100
    repel = (cluster == 1).astype(np.float32)
    return PreparedImage(
        "x", image, cluster.copy(), cluster, repel, np.array([[15.0, 20.0]]), np.array([""])
    )


def test_augmentation_keeps_image_and_targets_aligned():
    img = labelled_image()
    exact = AugmentParams(max_rotation_deg=0, scale_range=(1, 1), max_shear_deg=0)
    sampler = PatchSampler(
        [img], patch_size=32, batch_size=16, mean=[0, 0, 0], std=[1, 1, 1], augment=exact, seed=0
    )
    images, targets = sampler.batch(3)
    red = torch.round(images[:, 0] * 255 / 100).long()
    inside = red != 0
    # flips and 90-degree turns are exact: labels follow the pixels one to one
    assert torch.equal(targets["cluster"][inside], red[inside])
    assert set(torch.unique(targets["voronoi"]).tolist()) <= {0, 1, IGNORE}


def test_augmented_labels_stay_in_range_and_outside_is_ignored():
    img = labelled_image()
    sampler = PatchSampler(
        [img],
        patch_size=64,
        batch_size=8,
        mean=[0, 0, 0],
        std=[1, 1, 1],
        augment=AugmentParams(),
        seed=0,
    )
    _, targets = sampler.batch(0)
    for key in ("voronoi", "cluster"):
        assert set(torch.unique(targets[key]).tolist()) <= {0, 1, IGNORE}
    # windows are larger than the 64 px image: padding must be IGNORE, not background
    assert (targets["cluster"] == IGNORE).float().mean() > 0.3
    assert targets["repel"].min() >= 0 and targets["repel"].max() <= 1


def test_batches_depend_only_on_seed_and_step():
    img = labelled_image()
    kwargs = dict(
        patch_size=32, batch_size=4, mean=[0, 0, 0], std=[1, 1, 1], augment=AugmentParams()
    )
    a = PatchSampler([img], seed=5, **kwargs)
    b = PatchSampler([img], seed=5, **kwargs)
    a.batch(0)
    assert torch.equal(a.batch(7)[0], b.batch(7)[0])
    assert not torch.equal(a.batch(7)[0], a.batch(8)[0])


def striped_image(size=256, period=8):
    """Vertical stripes of cluster label 0/1, ``period`` px wide, to measure zoom."""
    cluster = ((np.arange(size) // (period // 2)) % 2).astype(np.uint8)[None].repeat(size, 0)
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 0] = cluster * 100
    return PreparedImage(
        "s", image, cluster.copy(), cluster, cluster.astype(np.float32), np.zeros((0, 2)),
        np.array([], str),
    )  # fmt: skip


@pytest.mark.parametrize("zoom, stripes", [(2.0, 4), (0.5, 16)])
def test_scale_range_zooms_and_zoomed_out_patches_stay_inside_the_window(zoom, stripes):
    img = striped_image()
    augment = AugmentParams(
        flips=False, rot90=False, max_rotation_deg=0, scale_range=(zoom, zoom), max_shear_deg=0
    )
    sampler = PatchSampler(
        [img], patch_size=32, batch_size=1, mean=[0, 0, 0], std=[1, 1, 1], augment=augment, seed=0
    )
    window = data_module.crop_window(img, (128.0, 128.0), sampler.window, sampler.fill)
    theta = torch.from_numpy(sampler._theta(np.random.default_rng(0))[None]).float()
    _, targets = sampler.warp([window], theta)
    cluster = targets["cluster"][0]
    assert not (cluster == IGNORE).any()  # a zoomed-out patch must not reach the padding
    # a 32 px patch shows 32 / zoom input pixels: 2 stripes of 8 px per period
    transitions = int((cluster[16, 1:] != cluster[16, :-1]).sum())
    assert abs(transitions - stripes) <= 1


def test_stain_scale_makes_patches_paler_by_the_drawn_factor():
    from skimage.color import rgb2hed

    colour = np.array([90, 70, 150], np.uint8)  # a hematoxylin-blue nucleus colour
    img = PreparedImage(
        "c", np.broadcast_to(colour, (64, 64, 3)).copy(), *[np.zeros((64, 64), np.uint8)] * 2,
        np.zeros((64, 64), np.float32), np.zeros((0, 2)), np.array([], str),
    )  # fmt: skip
    mean = (colour / 255).tolist()  # padding has the same colour
    augment = AugmentParams(stain_scale_range=(0.5, 0.5))
    sampler = PatchSampler(
        [img], patch_size=32, batch_size=2, mean=mean, std=[1, 1, 1], augment=augment, seed=0
    )
    images, _ = sampler.batch(0)
    pixels = (images.permute(0, 2, 3, 1).numpy() + np.array(mean)) * 255
    density = rgb2hed(np.clip(pixels, 0, 255).astype(np.uint8)[0, 16, 16][None, None])[0, 0]
    original = rgb2hed(colour[None, None])[0, 0]
    np.testing.assert_allclose(density, 0.5 * original, atol=0.01)


def test_colour_jitter_known_answers():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(colour_jitter(images, np.array([[1, 1, 1, 0.0]] * 2)), images)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 0.8
    darker, grey, green = (
        colour_jitter(red, np.array([factors]))[0, :, 0, 0]
        for factors in ([0.5, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1 / 3])
    )
    torch.testing.assert_close(darker, torch.tensor([0.4, 0.0, 0.0]))  # brightness scales
    flat = colour_jitter(images, np.array([[1, 0, 1, 0.0]] * 2))  # no contrast: one grey
    assert float(flat[0].max() - flat[0].min()) < 1e-6
    assert grey[0] == grey[1] == grey[2] > 0  # no saturation: the pixel's own grey
    torch.testing.assert_close(green, torch.tensor([0.0, 0.8, 0.0]))  # red turned to green


def test_colour_jitter_changes_the_images_only():
    img = labelled_image()
    exact = AugmentParams(max_rotation_deg=0, scale_range=(1, 1), max_shear_deg=0)
    plain, jittered = (
        PatchSampler(
            [img], patch_size=32, batch_size=4, mean=[0, 0, 0], std=[1, 1, 1], augment=a, seed=0
        ).batch(2)
        for a in (exact, replace(exact, colour_jitter=0.3))
    )
    assert not torch.equal(plain[0], jittered[0])
    for name, target in plain[1].items():
        assert torch.equal(target, jittered[1][name]), name


def test_proximity_target_is_a_cut_gaussian_of_the_distance_to_the_nearest_click():
    target = proximity_target((20, 30), np.array([[5.0, 10.0], [20.0, 10.0]]), sigma_px=3.0)
    assert target[10, 5] == pytest.approx(1.0) and target[10, 20] == pytest.approx(1.0)
    assert target[13, 5] == pytest.approx(np.exp(-0.5))  # one sigma below the click
    assert target[10, 11] == pytest.approx(np.exp(-(6**2) / 18))  # the nearer click counts
    assert target[10, 14] == pytest.approx(np.exp(-(6**2) / 18))
    assert target[10, 12] == pytest.approx(np.exp(-(7**2) / 18)) == target[10, 13]
    assert target[19, 12] == 0.0  # more than 3 sigma from every click
    assert proximity_target((4, 4), np.zeros((0, 2)), sigma_px=2.0).max() == 0.0


def test_sampled_proximity_follows_the_pixels():
    img = labelled_image()
    img = with_proximity(replace(img, repel=np.zeros_like(img.repel)), sigma_px=3.0)
    exact = AugmentParams(max_rotation_deg=0, scale_range=(1, 1), max_shear_deg=0)
    sampler = PatchSampler(
        [img], patch_size=32, batch_size=16, mean=[0, 0, 0], std=[1, 1, 1], augment=exact, seed=0
    )
    _, targets = sampler.batch(3)
    # the click at (15, 20) lies in the red cluster square: proximity 1 only on red pixels
    peaks = targets["proximity"] > 0.999
    assert peaks.sum() > 0
    assert torch.equal(targets["cluster"][peaks], torch.ones(int(peaks.sum()), dtype=torch.long))
    assert targets["repel"].abs().max() == 0  # the two smooth targets do not mix


def test_sampling_weights_follow_the_area_or_give_each_source_an_equal_share():
    areas = [100, 300, 600]
    assert np.allclose(sampling_weights(areas), [0.1, 0.3, 0.6])
    # two small images of source "a" get half the patches, the large one of "b" the rest
    assert np.allclose(sampling_weights(areas, ["a", "a", "b"]), [0.125, 0.375, 0.5])
    with pytest.raises(ValueError, match="one source per image"):
        sampling_weights(areas, ["a"])
