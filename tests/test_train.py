import os
import signal
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import make_disks, tiny_config
from pointcell import train as train_module
from pointcell.data import NO_AUGMENT, PatchSampler, channel_stats, with_proximity
from pointcell.encodings import encode
from pointcell.errors import PointcellInputError
from pointcell.inference import cells_from_maps, load_predictor, predict_maps
from pointcell.io.checkpoints import load_checkpoint
from pointcell.metrics import detection_scores
from pointcell.model import ModelConfig, build_model
from pointcell.targets import PreparedImage, point_class_names
from pointcell.train import (
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    config_from_options,
    fit,
    learning_rate,
    preset_config,
    resolve_split,
)
from pointcell.train import run as train_run
from pointcell.train.config import source_names
from pointcell.train.trainer import PROXIMITY_LR_SCALE

SMALL = ModelConfig(encoder="resnet18", decoder_channels=(16, 16, 16, 16, 16))


def test_run_folder_contents(disk_dataset, tmp_path):
    config = tiny_config(disk_dataset, tmp_path, snapshot_every=2)
    result = fit(config, tmp_path / "run", progress=False)
    snapshots = sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir())
    assert snapshots == ["step-000002.pt", "step-000004.pt"]
    assert "optimizer" not in load_checkpoint(tmp_path / "run" / "snapshots" / snapshots[0])
    assert load_predictor(tmp_path / "run" / "snapshots" / snapshots[0], device="cpu")
    assert 0 <= result.history[0]["val_det_f1"] <= 1
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "split.json",
        "metrics.csv",
        "last.pt",
        "best.pt",
    }
    assert result.steps == 4 and len(result.history) == 2
    assert "val_loss" in result.history[0]
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 4 and len(state["normalisation"]["mean"]) == 3
    assert TrainConfig.from_dict(state["config"]) == config
    assert state["elapsed_s"] > 0 and state["best_metric"] == "val_det_f1"


def one_patch_training(model, optimizer, steps, *, proximity_sigma_px=None):
    """A trainer and the one fixed batch of a 64x64 tile of four disks (no augmentation)."""
    tile = make_disks([(16, 16), (44, 20), (24, 46), (48, 48)], shape=(64, 64), mpp=0.5)
    enc = encode(tile.image, tile.centres_xy, mpp=0.5)
    image = PreparedImage(
        "one",
        tile.image,
        enc.voronoi,
        enc.cluster,
        enc.filtered_repel,
        tile.centres_xy,
        point_class_names([None] * len(tile.centres_xy)),
    )
    if proximity_sigma_px is not None:
        image = with_proximity(image, sigma_px=proximity_sigma_px)
    mean, std = channel_stats([image.image])
    config = TrainConfig(
        images="-",
        points="-",
        model=model,
        steps=steps,
        batch_size=2,
        patch_size=64,
        tasks_mode="sum",
        optimizer=optimizer,
        precision="fp32",
        device="cpu",
    )
    trainer = Trainer(config, mean=mean, std=std)
    sampler = PatchSampler(
        [image], patch_size=64, batch_size=2, mean=mean, std=std, augment=NO_AUGMENT, seed=0
    )
    sampler.window = 64  # the whole tile, unchanged, every step
    images, targets = sampler.batch(0)
    return trainer, tile, images, targets


@pytest.mark.parametrize(("optimizer", "factor"), [("adam", 10.0), ("ranger", 1.5)])
def test_overfits_one_synthetic_image(optimizer, factor):
    """40 steps on one fixed 64x64 patch: the summed loss falls by ``factor`` (measured: 32x
    with Adam; Ranger's RAdam warm-up makes it slower, 2.2x)."""
    trainer, _, images, targets = one_patch_training(SMALL, optimizer, 40)
    losses = [sum(trainer.step(i, images, targets).values()) for i in range(40)]
    assert losses[-1] < losses[0] / factor


def test_resume_after_interrupt_gives_identical_weights(disk_dataset, tmp_path, monkeypatch):
    straight = fit(tiny_config(disk_dataset, tmp_path), tmp_path / "a", progress=False)
    real_step = train_module.Trainer.step

    def interrupt_at_two(self, iteration, *args):
        if iteration == 2:
            raise KeyboardInterrupt
        return real_step(self, iteration, *args)

    monkeypatch.setattr(train_module.Trainer, "step", interrupt_at_two)
    with pytest.raises(TrainingInterrupted, match="after step 2 of 4.*--resume"):
        fit(tiny_config(disk_dataset, tmp_path), tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 2
    monkeypatch.setattr(train_module.Trainer, "step", real_step)
    resumed = fit(None, tmp_path / "b", resume=True, progress=False)
    assert resumed.steps == straight.steps == 4
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert a["best_score"] == b["best_score"]
    assert len(resumed.history) == len(straight.history)


def test_sigterm_finishes_the_step_saves_and_resumes_identically(
    disk_dataset, tmp_path, monkeypatch
):
    config = tiny_config(disk_dataset, tmp_path, checkpoint_every=10)  # last.pt only at the end
    straight = fit(config, tmp_path / "a", progress=False)
    real_step = train_module.Trainer.step

    def terminated_during_step_one(self, iteration, *args):
        if iteration == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as a batch scheduler or `kill` would
        return real_step(self, iteration, *args)

    monkeypatch.setattr(train_module.Trainer, "step", terminated_during_step_one)
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="after step 2 of 4"):
        fit(config, tmp_path / "b", progress=False)
    assert signal.getsignal(signal.SIGTERM) is handler_before
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 2  # step 1 was finished
    monkeypatch.setattr(train_module.Trainer, "step", real_step)
    resumed = fit(None, tmp_path / "b", resume=True, progress=False)
    assert resumed.steps == straight.steps == 4
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    for key, tensor in a.items():
        assert torch.equal(tensor, b[key]), key


def test_a_second_signal_stops_at_once_and_ignored_signals_stay_ignored():
    request = train_run._StopRequest()
    request(signal.SIGTERM, None)
    assert request.requested
    with pytest.raises(KeyboardInterrupt):
        request(signal.SIGTERM, None)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup
    try:
        with train_run._stop_on_signals() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGINT, previous)


def test_resume_with_more_steps_continues_a_finished_run(disk_dataset, tmp_path):
    straight = fit(tiny_config(disk_dataset, tmp_path, steps=6), tmp_path / "a", progress=False)
    fit(tiny_config(disk_dataset, tmp_path), tmp_path / "b", progress=False)
    with pytest.raises(PointcellInputError, match="already trained 4 steps"):
        fit(None, tmp_path / "b", resume=True, steps=4, progress=False)
    extended = fit(None, tmp_path / "b", resume=True, steps=6, progress=False)
    assert extended.steps == straight.steps == 6
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert b["total_steps"] == 6
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key


def test_truncated_checkpoint_is_detected(disk_dataset, tmp_path):
    fit(tiny_config(disk_dataset, tmp_path), tmp_path / "run", progress=False)
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(PointcellInputError, match="corrupt or truncated"):
        fit(None, tmp_path / "run", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run" / "best.pt")["step"] > 0


def test_failed_save_keeps_the_previous_checkpoint(disk_dataset, tmp_path, monkeypatch):
    fit(tiny_config(disk_dataset, tmp_path), tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "last.pt").read_bytes()

    def crash(obj, path):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    from pointcell.io.checkpoints import save_checkpoint

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "run" / "last.pt", {"step": 99})
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_existing_run_is_not_overwritten(disk_dataset, tmp_path):
    fit(tiny_config(disk_dataset, tmp_path), tmp_path / "run", progress=False)
    with pytest.raises(PointcellInputError, match="already holds a run"):
        fit(tiny_config(disk_dataset, tmp_path), tmp_path / "run", progress=False)


def test_small_images_zero_points_and_subsets_of_tasks(disk_dataset, tmp_path):
    (disk_dataset / "points" / "img0.csv").write_text("x,y\n")  # zero cells: all background
    config = tiny_config(
        disk_dataset,
        tmp_path,
        patch_size=128,
        tasks=("voronoi", "cluster"),
        tasks_mode="uncertainty",
    )  # 128 px patches on 96 px images: padded
    result = fit(config, tmp_path / "run", progress=False)
    assert result.steps == 4
    assert np.isfinite(result.history[-1]["train_cluster"])
    assert "train_repel" not in result.history[-1]


def test_points_without_images_and_no_points_at_all(disk_dataset, tmp_path):
    (disk_dataset / "points" / "orphan.csv").write_text("x,y\n1,1\n")
    with pytest.raises(PointcellInputError, match="no image for points file"):
        fit(tiny_config(disk_dataset, tmp_path), tmp_path / "run", progress=False)
    empty = tmp_path / "nopoints"
    empty.mkdir()
    with pytest.raises(PointcellInputError, match="has a points file"), pytest.warns(Warning):
        fit(
            tiny_config(disk_dataset, tmp_path, points=str(empty)),
            tmp_path / "run2",
            progress=False,
        )


def test_epochs_are_converted_to_steps(disk_dataset, tmp_path):
    config = tiny_config(disk_dataset, tmp_path, steps=None, epochs=2.0)
    # 3 images of 96x96 at 0.5 µm/px, two in training: 2 * 9216 / 64^2 / 2 -> 3 steps/epoch
    assert fit(config, tmp_path / "run", progress=False).steps == 6


def test_presets_and_config_validation():
    assert preset_config("paper", images="i", points="p").model.encoder == "resnet50"
    assert preset_config("paper", images="i", points="p").steps == 60_900
    assert preset_config("cpu", images="i", points="p", epochs=3).epochs == 3


def test_the_cpu_preset_starts_from_imagenet_only_with_its_own_encoder():
    cpu = config_from_options("cpu", images="i", points="p")
    assert cpu.model.encoder == "tu-tf_efficientnet_lite0" and cpu.encoder_weights == "imagenet"
    other = config_from_options("cpu", images="i", points="p", encoder="resnet18")
    assert other.model.encoder == "resnet18" and other.encoder_weights is None
    asked = config_from_options(
        "cpu", images="i", points="p", encoder="resnet18", encoder_weights="w.pth"
    )
    assert asked.encoder_weights == "w.pth"
    assert (
        config_from_options("cpu", images="i", points="p", encoder_weights="none").encoder_weights
        is None
    )
    assert config_from_options("paper", images="i", points="p").encoder_weights is None
    with pytest.raises(PointcellInputError, match="unknown preset"):
        preset_config("fast", images="i", points="p")
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(images="i", points="p", steps=1, patch_size=250)
    with pytest.raises(ValueError, match="exactly one"):
        TrainConfig(images="i", points="p")
    with pytest.raises(ValueError, match="anneal_from"):
        TrainConfig(images="i", points="p", steps=1, lr_schedule="flat-cosine", anneal_from=1.0)
    for bad in ({"optimizer": "sgd"}, {"lr_schedule": "linear"}, {"tasks_mode": "max"}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be one of"):
            TrainConfig(images="i", points="p", steps=1, **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tasks must be"):
        TrainConfig(images="i", points="p", steps=1, tasks=("voronoi", "edges"))


def test_flat_cosine_keeps_the_rate_then_halves_it_midway_and_ends_near_zero():
    rates = [learning_rate(s, 100, 1e-3, "flat-cosine", 0.6) for s in range(100)]
    assert rates[:60] == [1e-3] * 60
    assert rates[80] == pytest.approx(0.5e-3)  # half way through the 40 decaying steps
    assert 0 < rates[99] < 1e-5
    assert all(later <= earlier for earlier, later in zip(rates, rates[1:], strict=False))
    assert learning_rate(99, 100, 1e-3, "constant", 0.6) == 1e-3
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(0, 100, 1e-3, "linear", 0.6)  # type: ignore[arg-type]


def test_training_steps_use_the_scheduled_rate(disk_dataset, tmp_path, monkeypatch, caplog):
    """The loop hands every step its rate, and the optimizer applies it: at rate 0 no
    parameter moves."""
    config = tiny_config(
        disk_dataset, tmp_path, optimizer="adam", lr_schedule="flat-cosine", anneal_from=0.5
    )
    seen = []
    real_step = train_module.Trainer.step

    def record(self, iteration, images, targets, lr):
        seen.append(lr)
        before = [p.detach().clone() for p in self.model.parameters()]
        losses = real_step(self, iteration, images, targets, 0.0 if iteration == 3 else lr)
        after = list(self.model.parameters())
        moved = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
        assert moved == (iteration != 3)
        return losses

    monkeypatch.setattr(train_module.Trainer, "step", record)
    fit(config, tmp_path / "run", progress=False)
    assert seen == pytest.approx([1e-3, 1e-3, 1e-3, 0.5e-3])
    with caplog.at_level("WARNING", logger="pointcell.train"):
        fit(None, tmp_path / "run", resume=True, steps=5, progress=False)
    assert "stretched over the new total of 5 steps" in caplog.text
    assert seen[-1] == pytest.approx(learning_rate(4, 5, 1e-3, "flat-cosine", 0.5))


def test_distributed_settings_come_from_torchrun_variables(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not train_module.Distributed.from_environment().enabled
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    dist = train_module.Distributed.from_environment()
    assert dist.enabled and not dist.is_main and (dist.rank, dist.world_size) == (2, 4)


def test_torchrun_trains_one_model_in_two_processes(disk_dataset, tmp_path):
    """Two gloo processes draw different patches yet end with one model: the run fails if
    their weights diverge, and only rank 0 writes and reports."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        "-m",
        "pointcell.cli",
        "train",
        "--images",
        str(disk_dataset / "images"),
        "--points",
        str(disk_dataset / "points"),
        "--out",
        str(tmp_path / "run"),
        "--encoder",
        "resnet18",
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--patch-size",
        "64",
        "--tasks-mode",
        "uncertainty",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 3 steps") == 1
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["world_size"] == 2 and state["step"] == 3


HEAD = ModelConfig(encoder="resnet18", decoder_channels=(16, 16, 16, 16, 16), detection_head=True)


def test_a_detection_head_learns_to_find_the_clicks_of_one_patch():
    """60 Adam steps on one 64x64 tile: the proximity loss falls and the peaks of the
    proximity map are the four clicks (measured: proximity loss 0.055 -> 0.041, 4 of 4
    within 1.5 px)."""
    trainer, tile, images, targets = one_patch_training(HEAD, "adam", 60, proximity_sigma_px=3.0)
    rates = {group["lr_scale"] for group in trainer.optimizer.param_groups}
    assert rates == {1.0, PROXIMITY_LR_SCALE}
    losses = [trainer.step(i, images, targets)["proximity"] for i in range(60)]
    assert losses[-1] < 0.85 * losses[0]
    predictor = trainer.predictor()
    maps = predict_maps(predictor, tile.image)
    assert maps.shape == (2, 64, 64)  # nucleus, proximity
    cells = cells_from_maps(predictor, maps, mpp=0.5)
    assert detection_scores(tile.centres_xy, cells.xy, radius=3.0).f1 == 1.0


def test_fine_tuning_a_detector_into_one_with_a_detection_head(disk_dataset, tmp_path):
    fit(tiny_config(disk_dataset, tmp_path, steps=2), tmp_path / "plain", progress=False)
    config = tiny_config(
        disk_dataset, tmp_path, model=HEAD, init_from=str(tmp_path / "plain" / "last.pt")
    )
    result = fit(config, tmp_path / "head", progress=False)
    assert "val_proximity" in result.history[0] and "train_proximity" in result.history[0]
    plain = load_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    initial = train_module.adapt_output_head(plain, build_model(HEAD).state_dict())
    assert set(initial) == set(build_model(HEAD).state_dict())  # the head comes from HEAD
    predictor = load_predictor(tmp_path / "head" / "last.pt", device="cpu")
    assert predictor.detection_head and predictor.classes == ()
    back = train_module.adapt_output_head(
        load_checkpoint(tmp_path / "head" / "last.pt")["model"], build_model(SMALL).state_dict()
    )
    assert not any(k.startswith("proximity") for k in back)  # and can be dropped again


def test_split_files_take_comments_and_test_groups_and_refuse_the_rest():
    config = TrainConfig(
        images="i",
        points="p",
        steps=1,
        split={"_source": "Kumar", "train": ["a", "b"], "val": ["c"], "test_same_organ": ["d"]},
    )
    assert resolve_split(config, {s: s for s in "abcd"}) == {
        "train": ["a", "b"],
        "val": ["c"],
        "test": ["d"],
    }
    for bad, words in (
        ({"train": ["a"], "validation": ["c"]}, 'unknown key "validation"'),
        ({"train": "a"}, 'the split\'s "train" must be a list'),
        ({"train": ["a"], "test_x": ["a"]}, "both train and test: a"),
        (["a"], "must be a JSON object"),
    ):
        with pytest.raises(PointcellInputError, match=words):
            resolve_split(
                TrainConfig(images="i", points="p", steps=1, split=bad), {s: s for s in "abcd"}
            )


def test_sources_file_names_each_training_image_source(tmp_path):
    sources = tmp_path / "sources.json"
    sources.write_text('{"kumar": ["a", "b"], "crc": ["c"]}')
    config = config_from_options("cpu", images="i", points="p", steps=1, sources_file=sources)
    assert source_names(config, ["a", "c", "z"]) == ["kumar", "crc", "(other images)"]
    assert source_names(replace(config, sources=None), ["a"]) is None
    refused = (('["a"]', "must be a JSON object"), ('{"x": ["a"], "y": ["a"]}', "two sources"))
    for bad, words in refused:
        sources.write_text(bad)
        with pytest.raises(PointcellInputError, match=words):
            config_from_options("cpu", images="i", points="p", steps=1, sources_file=sources)


def test_a_run_draws_patches_evenly_from_its_sources(tmp_path):
    from pointcell.train.distributed import Distributed
    from pointcell.train.run import _trainer_and_sampler

    def tile(stem, side):
        image = np.zeros((side, side, 3), np.uint8)
        labels = np.zeros((side, side), np.uint8)
        no_points = np.zeros((0, 2))
        return PreparedImage(stem, image, labels, labels, labels.astype(np.float32), no_points,
                             point_class_names([]))  # fmt: skip

    # one large image of one source, three small ones of another: by area the large one
    # would give 4/7 of the patches, with sources it gives half
    images = [tile("big", 128), *(tile(f"small{k}", 64) for k in range(3))]
    config = TrainConfig(
        images="-",
        points="-",
        model=SMALL,
        steps=1,
        batch_size=2,
        patch_size=32,
        device="cpu",
        precision="fp32",
        sources={"kumar": ["big"], "crc": ["small0", "small1", "small2"]},
    )
    _, sampler = _trainer_and_sampler(config, None, images, Distributed(), "cpu")
    np.testing.assert_allclose(sampler.weights, [1 / 2, 1 / 6, 1 / 6, 1 / 6])
    _, by_area = _trainer_and_sampler(
        replace(config, sources=None), None, images, Distributed(), "cpu"
    )
    np.testing.assert_allclose(by_area.weights, [4 / 7, 1 / 7, 1 / 7, 1 / 7])
