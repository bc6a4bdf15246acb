import pytest

from pointcell.demo import run_demo


# an untrained model's detections may sit shifted against the true centres, which evaluate
# rightly reports; the warning is beside the point of this test
@pytest.mark.filterwarnings("ignore:the true points lie on average")
def test_demo_runs_on_any_model_and_reports(small_checkpoint, tmp_path):
    result = run_demo(tmp_path, steps=2, model=str(small_checkpoint), progress=False)
    page = result.report_html.read_text()
    assert "<table>" in page and "after 2 fine-tuning steps" in page
    for stem in result.after.per_image:
        assert f"labels/overlay/{stem}.png" in page
        assert (tmp_path / "predictions" / f"{stem}_overlay.png").is_file()
    assert set(result.before.aggregate) >= {"aji", "det_f1"}
    again = run_demo(tmp_path, steps=2, model=str(small_checkpoint), progress=False)
    assert again.after.aggregate["n_images"] == 2  # a second demo in the same folder works
