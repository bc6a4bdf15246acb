"""Bad input, command by command: each ends in one clear line and a documented exit code.

``CASES`` is the table the README's "When the input is wrong" section is checked against:
every row there names a case here and the words its message holds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from PIL import Image

from pointcell.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED, main
from pointcell.sample import sample_dir

README = Path(__file__).resolve().parents[1] / "README.md"
SAMPLE = sample_dir()
MARKER = "pointcell-was-here"  # the file a malicious model tries to create


class _RunsShell:
    """Unpickling this calls ``os.system``: what a malicious model file does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def malicious_model(tmp: Path) -> Path:
    path = tmp / "shared-model.pt"
    torch.save(
        {"format": "pointcell-checkpoint", "payload": _RunsShell(f"touch {tmp / MARKER}")}, path
    )
    return path


def missing_module_model(tmp: Path) -> Path:
    """A pickle naming a module that is not installed (``GLOBAL nosuchmodule.Thing``)."""
    module = types.ModuleType("nosuchmodule")
    thing = type("Thing", (), {"__module__": "nosuchmodule"})
    module.Thing = thing  # type: ignore[attr-defined]
    sys.modules["nosuchmodule"] = module
    try:
        path = tmp / "odd.pt"
        torch.save({"format": "pointcell-checkpoint", "thing": thing()}, path)
    finally:
        del sys.modules["nosuchmodule"]
    return path


def images(tmp: Path) -> str:
    return str(SAMPLE / "images")


def points(tmp: Path) -> str:
    return str(SAMPLE / "points")


def run_folder_with(model: Path) -> Path:
    """A run folder whose last checkpoint is ``model`` (for --resume)."""
    run = model.parent / "run"
    run.mkdir()
    shutil.copy(model, run / "last.pt")
    (run / "config.json").write_text("{}")
    return run


def absurd_metadata_tiff(tmp: Path) -> str:
    """A copy of a sample image whose tags say 1e13 µm/px."""
    folder = tmp / "absurd"
    folder.mkdir()
    pixels = tifffile.imread(next((SAMPLE / "images").glob("*.tif")))
    tifffile.imwrite(
        folder / "big.tif", pixels, resolution=(1e-9, 1e-9), resolutionunit="CENTIMETER"
    )
    return str(folder)


def truncated(tmp: Path, text: str = '{"train": ["a",') -> str:
    path = tmp / "split.json"
    path.write_text(text)
    return str(path)


def stems() -> list[str]:
    return sorted(p.stem for p in (SAMPLE / "images").glob("*.tif"))


def split_on_both_sides(tmp: Path) -> str:
    first, second = stems()
    return truncated(tmp, json.dumps({"train": [first, second], "val": [first]}))


def a_file(tmp: Path) -> Path:
    path = tmp / "not-a-folder"
    path.write_text("x")
    return path


def no_clicks(tmp: Path) -> str:
    folder = tmp / "empty-clicks"
    folder.mkdir()
    for stem in stems():
        (folder / f"{stem}.csv").write_text("x,y\n")
    return str(folder)


def empty_folder(tmp: Path) -> str:
    (tmp / "empty").mkdir(exist_ok=True)
    return str(tmp / "empty")


def floor_predictions(tmp: Path, *, keep: int | None = None, complete: bool = True) -> Path:
    """The baseline's outputs on the sample (laid out as predict's), optionally with only
    ``keep`` images and ``predictions.json`` marked as an interrupted run leaves it."""
    out = tmp / "pred"
    result = CliRunner().invoke(main, ["baseline", "--images", images(tmp), "--out", str(out)])
    assert result.exit_code == 0, result.output
    if keep is not None:
        for stem in stems()[keep:]:
            for path in out.glob(f"{stem}*"):
                path.unlink()
    record = json.loads((out / "predictions.json").read_text())
    record["complete"] = complete
    record["expected"] = stems()
    record["images"] = {stem: record["images"][stem] for stem in stems()[:keep]}
    (out / "predictions.json").write_text(json.dumps(record))
    return out


def transparent_image(tmp: Path) -> str:
    folder = tmp / "rgba"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA").save(folder / "clear.png")
    return str(folder)


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Path], list[str]]
    words: tuple[str, ...]  # all must appear in the output
    exit_code: int = EXIT_ERROR


OUT = ["--out", "OUT"]  # replaced by a fresh folder under tmp
NOT_FINITE = ("--mpp", "not a finite number")
REFUSED = ("refused", "nothing in it was run")
COMMANDS_WITH_MPP = {
    "labels": lambda t: ["labels", "--images", images(t), "--points", points(t), *OUT],
    "predict": lambda t: ["predict", "--images", images(t), *OUT],
    "baseline": lambda t: ["baseline", "--images", images(t), *OUT],
    "train": lambda t: ["train", "--images", images(t), "--points", points(t), *OUT],
}
COMMANDS_WITH_MODEL = {  # each command that opens a model file, given one
    "predict": lambda m: ["predict", "--model", str(m), "--images", images(m), *OUT],
    "init": lambda m: [
        "train",
        "--init-from",
        str(m),
        "--images",
        images(m),
        "--points",
        points(m),
        *OUT,
    ],
    "resume": lambda m: ["train", "--resume", str(run_folder_with(m))],
    "tune": lambda m: [
        "tune",
        "--model",
        str(m),
        "--images",
        images(m),
        "--points",
        points(m),
        "--out",
        str(m.parent / "m.pt"),
    ],
    "export": lambda m: ["export", "--model", str(m), "--out", str(m.parent / "m.pt")],
}
CASES = [
    *(
        Case(f"mpp-nan-{name}", lambda t, c=command: [*c(t), "--mpp", "nan"], NOT_FINITE)
        for name, command in COMMANDS_WITH_MPP.items()
    ),
    Case(
        "mpp-huge",
        lambda t: ["predict", "--images", images(t), *OUT, "--mpp", "1000"],
        ("pixel size 1000", "not plausible"),
    ),
    Case(
        "mpp-tiny",
        lambda t: ["baseline", "--images", images(t), *OUT, "--mpp", "0.0001"],
        ("pixel size 0.0001", "not plausible"),
    ),
    Case(
        "mpp-huge-labels",
        lambda t: ["labels", "--images", images(t), "--points", points(t), *OUT, "--mpp", "1000"],
        ("not plausible",),
    ),
    Case(
        "mpp-metadata",
        lambda t: ["baseline", "--images", absurd_metadata_tiff(t), *OUT],
        ("big.tif", "not plausible", "pass --mpp"),
    ),
    Case(
        "radius-nan",
        lambda t: [
            "evaluate",
            "--pred",
            str(SAMPLE / "masks"),
            "--gt",
            str(SAMPLE / "masks"),
            "--radius-um",
            "nan",
        ],
        ("--radius-um", "not a finite number"),
    ),
    Case(
        "out-is-file",
        lambda t: ["baseline", "--images", images(t), "--out", str(a_file(t))],
        ("--out", "is a file"),
    ),
    Case(
        "out-under-file",
        lambda t: ["predict", "--images", images(t), "--out", str(a_file(t) / "sub")],
        ("cannot create it", "is a file"),
    ),
    Case(
        "tune-out-under-file",
        lambda t: [
            "tune",
            "--model",
            "pointcell-he",
            "--images",
            images(t),
            "--points",
            points(t),
            "--out",
            str(a_file(t) / "m.pt"),
        ],
        ("cannot create it",),
    ),
    Case(
        "split-truncated",
        lambda t: [
            "train",
            "--images",
            images(t),
            "--points",
            points(t),
            *OUT,
            "--split",
            truncated(t),
        ],
        ("split.json", "cannot read the split as JSON"),
    ),
    Case(
        "split-both-sides",
        lambda t: [
            "train",
            "--images",
            images(t),
            "--points",
            points(t),
            *OUT,
            "--split",
            split_on_both_sides(t),
            "--steps",
            "1",
        ],
        ("both train and val", stems()[0]),
    ),
    Case(
        "labels-no-images",
        lambda t: ["labels", "--images", empty_folder(t), "--points", empty_folder(t), *OUT],
        ("no image with a points file",),
    ),
    Case(
        "tune-no-clicks",
        lambda t: [
            "tune",
            "--model",
            "pointcell-he",
            "--images",
            images(t),
            "--points",
            no_clicks(t),
            "--out",
            str(t / "m.pt"),
        ],
        ("no clicks",),
    ),
    Case(
        "evaluate-interrupted",
        lambda t: [
            "evaluate",
            "--pred",
            str(floor_predictions(t, keep=1, complete=False)),
            "--gt",
            str(SAMPLE / "masks"),
        ],
        ("was interrupted", "1 of 2 images done", "--allow-missing"),
    ),
    Case(
        "evaluate-unpredicted",
        lambda t: [
            "evaluate",
            "--pred",
            str(floor_predictions(t, keep=1)),
            "--gt",
            str(SAMPLE / "masks"),
        ],
        ("1 ground-truth image", "no prediction", "--allow-missing"),
    ),
    Case(
        "evaluate-allow-missing",
        lambda t: [
            "evaluate",
            "--pred",
            str(floor_predictions(t, keep=1)),
            "--gt",
            str(SAMPLE / "masks"),
            "--allow-missing",
        ],
        ("partial: 1 ground-truth image(s) had no prediction",),
        exit_code=0,
    ),
    Case(
        "evaluate-json-truncated",
        lambda t: ["evaluate", "--pred", str(truncated_record(t)), "--gt", str(SAMPLE / "masks")],
        ("predictions.json: cannot read the predictions record", "run predict again"),
    ),
    Case(
        "rgba-invisible",
        lambda t: ["baseline", "--images", transparent_image(t), *OUT, "--mpp", "0.25"],
        ("clear.png", "no visible pixels"),
        exit_code=0,
    ),
    *(
        Case(f"model-runs-code-{name}", lambda t, m=model: m(malicious_model(t)), REFUSED)
        for name, model in COMMANDS_WITH_MODEL.items()
    ),
    Case(
        "model-missing-module",
        lambda t: ["predict", "--model", str(missing_module_model(t)), "--images", images(t), *OUT],
        ("refused", "nosuchmodule"),
    ),
    Case("usage-unknown-command", lambda t: ["nosuch"], ("No such command",)),
    Case("usage-missing-option", lambda t: ["predict", *OUT], ("Missing option", "--images")),
    Case(
        "usage-bad-choice",
        lambda t: ["baseline", "--images", images(t), *OUT, "--stain", "eosin"],
        ("--stain", "eosin"),
    ),
]


def truncated_record(tmp: Path) -> Path:
    out = floor_predictions(tmp)
    (out / "predictions.json").write_text('{"model": "x", "complete": tr')
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_ends_in_one_clear_line(case, tmp_path):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in case.args(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == case.exit_code, result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for word in case.words:
        assert word in text, (word, result.output)
    assert not (tmp_path / MARKER).exists()  # no model file ran its code
    if case.exit_code:
        assert not (tmp_path / "out").exists()  # refused before any output was made


def test_the_malicious_model_would_run_its_code_if_unpickled(tmp_path):
    """The crafted file is real: plain unpickling runs it, so the refusals above mean it."""
    torch.load(malicious_model(tmp_path), weights_only=False)
    assert (tmp_path / MARKER).exists()


def test_evaluate_takes_the_whole_output_of_predict_save_probability(tmp_path):
    out = floor_predictions(tmp_path)
    for labels in sorted(out.glob("*.tif")):  # as --save-probability writes them beside
        tifffile.imwrite(out / f"{labels.stem}_probability.tif", np.zeros((8, 8), np.float32))
    result = CliRunner().invoke(
        main, ["evaluate", "--pred", str(out), "--gt", str(SAMPLE / "masks")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "evaluation.json").read_text())
    assert sorted(report["per_image"]) == stems()


def readme_rows() -> list[tuple[str, int, list[str]]]:
    """(case, exit code, words) of each row of the README's bad-input table."""
    section = README.read_text().split("<!-- bad-input table -->")[1].split("<!-- end")[0]
    rows = re.findall(r"^\| `([\w-]+)` \|[^|]*\| (\d+) \| (.*) \|$", section, re.MULTILINE)
    return [(name, int(code), re.findall(r"“([^”]+)”", words)) for name, code, words in rows]


def test_the_readme_bad_input_table_matches_the_tests():
    documented = readme_rows()
    assert len(documented) >= 10
    cases = {c.name: c for c in CASES}
    for name, code, words in documented:
        assert name in cases, name
        assert code == cases[name].exit_code, name
        assert words and set(words) <= set(cases[name].words), name


def slow_image(folder: Path) -> Path:
    """A tile big enough that the network is still running when the signal comes."""
    folder.mkdir()
    pixels = tifffile.imread(next((SAMPLE / "images").glob("*.tif")))
    tifffile.imwrite(
        folder / "big.tif",
        np.tile(pixels, (12, 12, 1)),
        resolution=(4e4, 4e4),
        resolutionunit="CENTIMETER",
    )
    return folder


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [
        (signal.SIGTERM, EXIT_TERMINATED, "terminated"),
        (signal.SIGINT, EXIT_INTERRUPTED, "interrupted"),
    ],
)
def test_a_signal_stops_predict_with_one_line_and_no_temporaries(tmp_path, signum, code, word):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "pointcell",
        "predict",
        "--images",
        str(slow_image(tmp_path / "in")),
        "--out",
        str(out),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell without job control starts background jobs (a CI script run with &) with
        # SIGINT ignored, and children inherit it; a user's Ctrl-C reaches a foreground process
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (out / "predictions.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert word in stderr and "Traceback" not in stderr
    assert json.loads((out / "predictions.json").read_text())["complete"] is False
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_ctrl_c_while_the_command_line_is_imported_prints_one_line(monkeypatch, capsys):
    import builtins

    from pointcell import __main__ as entry

    real_import = builtins.__import__

    def interrupted_import(name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name == "pointcell.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted_import)
    with pytest.raises(SystemExit) as stopped:
        entry.run()
    assert stopped.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "interrupted\n"
