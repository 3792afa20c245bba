"""``linguine evaluate`` and LinGuinELib.research.evaluation: the Table 1 metrics on small labelled studies whose
answers are known (fake backends with known shifts), and the files a user reads."""

from __future__ import annotations

import csv
import datetime as dt
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from fakes import ShiftRegistration, ThresholdSegmenter
from LinGuinELib import backends, cli
from LinGuinELib.research.evaluation import evaluate_study, summarise
from LinGuinELib.core.study import Study, load_study_csv

DAY0 = dt.datetime(2021, 3, 1)
# Both lesions move +3 voxels (= +3 mm) along i per follow-up; lesion 2 is gone on the last scan.
BLOBS = {
    "t0": (((10, 20, 16), 5.0), ((10, 7, 30), 3.0)),
    "t1": (((10, 20, 19), 5.0), ((10, 7, 33), 3.0)),
    "t2": (((10, 20, 22), 5.0),),
}
WEEKS = {"t0": 0, "t1": 4, "t2": 10}
OFFSETS = {"t0": (0.0, 0.0, 0.0), "t1": (3.0, 0.0, 0.0), "t2": (6.0, 0.0, 0.0)}  # LPS mm, exact


def _scans(scan_factory):
    return [scan_factory(scan_id=sid, date=DAY0 + dt.timedelta(weeks=WEEKS[sid]), blobs=blobs, seed=n)
            for n, (sid, blobs) in enumerate(BLOBS.items())]


def write_study(folder, scans, patient_id="P1", label=True):
    """Write scans (+ labels) as NIfTI and a study.csv; returns the csv path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for scan in scans:
        sitk.WriteImage(scan.to_sitk(), str(folder / f"{scan.scan_id}.nii.gz"))
        row = {"patient_id": patient_id, "scan_id": scan.scan_id, "date": scan.date.date().isoformat(),
               "image": f"{scan.scan_id}.nii.gz", "label": ""}
        if label and scan.label is not None:
            sitk.WriteImage(scan.to_sitk(scan.label.astype(np.uint8)), str(folder / f"{scan.scan_id}_label.nii.gz"))
            row["label"] = f"{scan.scan_id}_label.nii.gz"
        rows.append(row)
    with open(folder / "study.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "study.csv"


def _rows_by_pair(rows):
    return {(r["lesion_id"], r["target_scan"]): r for r in rows}


@pytest.mark.parametrize("prompt, chain", [("mask", False), ("click", False), ("mask", True)])
def test_exact_registration_scores_perfectly_and_counts_disappearance_apart(scan_factory, prompt, chain):
    study = Study("P1", _scans(scan_factory))
    ev = evaluate_study(study, ShiftRegistration(OFFSETS), ThresholdSegmenter(), source="first", prompt=prompt,
                        chain=chain)
    pairs = _rows_by_pair(ev.rows)
    assert set(pairs) == {(1, "t1"), (1, "t2"), (2, "t1"), (2, "t2")}
    for key in [(1, "t1"), (1, "t2"), (2, "t1")]:
        r = pairs[key]
        assert r["outcome"] == "found" and r["dice"] == pytest.approx(1.0)
        assert r["ed_mm"] == pytest.approx(0.0, abs=1e-6)
        assert r["propagation_error_mm"] == pytest.approx(0.0, abs=1e-6) and r["point_in_lesion"] is True
    gone = pairs[(2, "t2")]
    assert gone["truth"] == "absent" and gone["outcome"] == "correct_empty" and gone["dice"] is None
    assert pairs[(1, "t2")]["weeks"] == pytest.approx(10.0)
    s = summarise(ev.rows)
    assert s["n_pairs"] == 3 and s["n_correct_empty"] == 1
    assert s["median_dice"] == pytest.approx(1.0) and s["ed_undefined_fraction"] == 0.0


def test_registration_error_shows_as_propagation_error_and_a_miss(scan_factory):
    # t1: the map is 2 mm off (still inside the 5 mm lesion); t2: 9 mm off (outside it: nothing found).
    wrong = dict(OFFSETS, t1=(3.0, 2.0, 0.0), t2=(15.0, 0.0, 0.0))
    study = Study("P1", _scans(scan_factory)[:3])
    ev = evaluate_study(study, ShiftRegistration(wrong), ThresholdSegmenter(), source="first")
    pairs = _rows_by_pair(ev.rows)
    near = pairs[(1, "t1")]
    assert near["propagation_error_mm"] == pytest.approx(2.0, abs=1e-6) and near["point_in_lesion"] is True
    assert near["dice"] == pytest.approx(1.0)
    missed = pairs[(1, "t2")]
    assert missed["outcome"] == "missed" and missed["dice"] == 0.0 and missed["ed_mm"] is None
    assert missed["propagation_error_mm"] == pytest.approx(9.0, abs=1e-6) and missed["point_in_lesion"] is False
    s = summarise(ev.rows)
    assert s["ed_undefined_fraction"] == pytest.approx(1 / 3)  # 1 of the 3 pairs with the lesion present
    assert s["median_propagation_error_mm"] == pytest.approx(2.0, abs=1e-6)


def test_partial_overlap_dice_and_centre_distance(scan_factory):
    # The target lesion is 2 voxels (4 mm, along k) away from where the segmenter is prompted, but the
    # threshold region still touches it: prediction = truth, so the error is only in the point.
    scans = [scan_factory("a", DAY0, blobs=(((10, 20, 20), 5.0),)),
             scan_factory("b", DAY0 + dt.timedelta(weeks=2), blobs=(((12, 20, 20), 5.0),), seed=1)]
    ev = evaluate_study(Study("P", scans), ShiftRegistration({}), ThresholdSegmenter(), source="first")
    (row,) = ev.rows
    assert row["dice"] == pytest.approx(1.0) and row["ed_mm"] == pytest.approx(0.0, abs=1e-6)
    assert row["propagation_error_mm"] == pytest.approx(4.0, abs=1e-6)
    # A segmenter whose result is the source lesion in place: Dice below 1, ED = the 4 mm shift.
    class Stale(ThresholdSegmenter):
        def _segment(self, scan, positive, negative):
            return scans[0].label == 1

    (row,) = evaluate_study(Study("P", scans), ShiftRegistration({}), Stale(), source="first").rows
    a, b = scans[0].label == 1, scans[1].label == 1
    assert row["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
    assert row["ed_mm"] == pytest.approx(4.0, abs=1e-6)


def test_summary_slope_and_medians():
    def row(pid, weeks, dice, ed, err, truth="present"):
        return {"patient_id": pid, "weeks_elapsed": weeks, "dice": dice, "ed_mm": ed, "propagation_error_mm": err,
                "point_in_lesion": err is not None and err < 3, "truth": truth,
                "outcome": "correct_empty" if dice is None else "found"}

    rows = [row("A", 2, 0.9, 1.0, 1.0), row("A", 4, 0.7, 3.0, 2.0), row("B", 6, 0.5, None, 8.0),
            row("B", 8, None, None, None, truth="absent")]
    s = summarise(rows)
    assert s["median_dice"] == pytest.approx(0.7) and s["n_pairs"] == 3 and s["n_correct_empty"] == 1
    assert s["median_ed_mm"] == pytest.approx(2.0) and s["ed_undefined_fraction"] == pytest.approx(1 / 3)
    assert s["median_propagation_error_mm"] == pytest.approx(2.0)
    assert s["dice_slope_per_week"] == pytest.approx(-0.1)


@pytest.fixture
def threshold_backend(monkeypatch):
    monkeypatch.setitem(backends.SEGMENTERS, "threshold", ("fakes", "ThresholdSegmenter"))


def test_cli_writes_table1_outputs(tmp_path, scan_factory, threshold_backend, capsys):
    # Two studies without motion (identity registration is exact); the second is prompted from its last scan.
    still = [scan_factory(scan_id=sid, date=DAY0 + dt.timedelta(weeks=WEEKS[sid]), blobs=BLOBS["t0"][:1], seed=n)
             for n, sid in enumerate(("t0", "t1", "t2"))]
    csv_a = write_study(tmp_path / "a", _scans(scan_factory), "PA")
    csv_b = write_study(tmp_path / "b", still, "PB")
    out = tmp_path / "eval"
    code = cli.main(["evaluate", str(csv_a), str(csv_b), "--out", str(out), "--source", "last",
                     "--registration", "identity", "--segmentation", "threshold", "--prompt", "click"])
    assert code == 0
    with open(out / "per_lesion.csv") as fh:
        rows = list(csv.DictReader(fh))
    # Study A from t2 holds only lesion 1 (2 pairs); study B lesion 1 (2 pairs).
    assert len(rows) == 4 and {r["patient_id"] for r in rows} == {"PA", "PB"}
    assert all(r["source_scan"] == "t2" and r["prompt"] == "click" for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("median_dice", "median_ed_mm", "n_pairs", "ed_undefined_fraction", "median_propagation_error_mm"):
        assert key in summary and key in summary["per_study"]["PA"] and key in summary["per_study"]["PB"]
    assert summary["per_study"]["PB"]["median_dice"] == pytest.approx(1.0)
    assert summary["n_pairs"] == 4
    # Identity registration misses A's moving lesion by 3 and 6 mm: the propagation error says so.
    pa = sorted(float(r["propagation_error_mm"]) for r in rows if r["patient_id"] == "PA")
    assert pa == pytest.approx([3.0, 6.0], abs=1e-3)
    md = (out / "summary.md").read_text()
    assert "| PA |" in md and "| PB |" in md and "**All**" in md and "Dice slope" in md
    assert (out / "dice_vs_weeks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "**All**" in capsys.readouterr().out


def test_cli_rejects_unlabelled_scan_and_duplicate_patients(tmp_path, scan_factory, threshold_backend, capsys):
    scans = _scans(scan_factory)
    scans[1].label = None
    unlabelled = write_study(tmp_path / "u", scans, "PU")
    assert cli.main(["evaluate", str(unlabelled), "--out", str(tmp_path / "o1"), "--registration", "identity",
                     "--segmentation", "threshold"]) == 2
    err = capsys.readouterr().err
    assert "t1" in err and "label" in err
    a = write_study(tmp_path / "a", _scans(scan_factory), "SAME")
    b = write_study(tmp_path / "b", _scans(scan_factory), "SAME")
    assert cli.main(["evaluate", str(a), str(b), "--out", str(tmp_path / "o2"), "--registration", "identity",
                     "--segmentation", "threshold"]) == 2
    assert "SAME" in capsys.readouterr().err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_loaded_csv_round_trip_keeps_labels(tmp_path, scan_factory):
    study = load_study_csv(write_study(tmp_path / "s", _scans(scan_factory)))
    ev = evaluate_study(study, ShiftRegistration(OFFSETS), ThresholdSegmenter(), source="t1")
    assert {r["target_scan"] for r in ev.rows} == {"t0", "t2"}
    assert _rows_by_pair(ev.rows)[(1, "t0")]["weeks"] == pytest.approx(-4.0)


class CachingThreshold(ThresholdSegmenter):
    """Caches its per-scan preprocessing by scan id, as real backends do."""

    def __init__(self):
        super().__init__()
        self.cache = {}

    def _segment(self, scan, positive, negative):
        if scan.scan_id not in self.cache:
            self.cache[scan.scan_id] = ndimage.label(scan.array > self.level)[0]
        labels = self.cache[scan.scan_id]
        return labels == labels[tuple(positive[0])] if labels[tuple(positive[0])] else np.zeros(scan.shape, bool)

    def forget(self, scan_id):
        self.cache.pop(scan_id, None)


def test_backend_caches_do_not_leak_between_studies_with_the_same_scan_ids(scan_factory):
    segmenter = CachingThreshold()
    first = Study("A", _scans(scan_factory))
    evaluate_study(first, ShiftRegistration(OFFSETS), segmenter)
    assert segmenter.cache == {}
    # Same scan ids, lesion elsewhere: stale preprocessing from study A would score 0 here.
    moved = {sid: tuple(((c[0], c[1] + 10, c[2]), r) for c, r in blobs[:1]) for sid, blobs in BLOBS.items()}
    second = Study("B", [scan_factory(scan_id=sid, date=DAY0 + dt.timedelta(weeks=WEEKS[sid]), blobs=b, seed=7)
                         for sid, b in moved.items()])
    rows = evaluate_study(second, ShiftRegistration(OFFSETS), segmenter).rows
    assert [r["dice"] for r in rows] == pytest.approx([1.0, 1.0])


class LabelReadingSegmenter(ThresholdSegmenter):
    """A backend that would cheat: returns the scan's true lesion if the scan carries its label map."""

    name = "label-reader"

    def __init__(self):
        super().__init__()
        self.seen_labels = []

    def _segment(self, scan, positive, negative):
        self.seen_labels.append((scan.scan_id, scan.label is not None))
        if scan.label is not None:
            return scan.label == scan.label[tuple(positive[0])]
        return np.zeros(scan.shape, bool)


class LabelReadingRegistration(ShiftRegistration):
    def register(self, source, target):
        assert source.label is None and target.label is None, "the tracker must not see label maps"
        with pytest.raises(ValueError):
            target.array[0, 0, 0] = 0  # nor change the images the scoring reads
        return super().register(source, target)


def test_tracker_never_sees_the_labels(scan_factory):
    study = Study("P1", _scans(scan_factory))
    segmenter = LabelReadingSegmenter()
    ev = evaluate_study(study, LabelReadingRegistration(OFFSETS), segmenter, source="first", prompt="click")
    assert segmenter.seen_labels and not any(seen for _, seen in segmenter.seen_labels)
    # The cheat gains nothing: every present target lesion is missed (Dice 0), nothing is "found".
    pairs = _rows_by_pair(ev.rows)
    assert [pairs[k]["outcome"] for k in [(1, "t1"), (1, "t2"), (2, "t1")]] == ["missed"] * 3
    assert all(study.scan(sid).label is not None for sid in ("t0", "t1", "t2")), "the caller's study keeps them"


class BallSegmenter(ThresholdSegmenter):
    """Always 'finds' a 3 mm ball at the point, lesion or not."""

    name = "ball"

    def _segment(self, scan, positive, negative):
        kk, jj, ii = np.indices(scan.shape)
        k, j, i = positive[0]
        sp = scan.spacing_kji
        return ((kk - k) * sp[0]) ** 2 + ((jj - j) * sp[1]) ** 2 + ((ii - i) * sp[2]) ** 2 <= 9.0


def test_false_positive_is_reported_apart_from_dice(scan_factory, tmp_path):
    from LinGuinELib.research.evaluation import write_evaluation

    study = Study("P1", _scans(scan_factory))
    ev = evaluate_study(study, ShiftRegistration(OFFSETS), BallSegmenter(), source="first", prompt="click")
    fp = _rows_by_pair(ev.rows)[(2, "t2")]  # lesion 2 is gone on t2, yet a mask is predicted there
    assert fp["truth"] == "absent" and fp["outcome"] == "false_positive" and fp["dice"] is None
    present_dice = [r["dice"] for r in ev.rows if r["truth"] == "present"]
    summary = write_evaluation(ev.rows, tmp_path / "eval", {"registration": "shift", "segmentation": "ball"})
    assert summary["n_pairs"] == 3 and summary["median_dice"] == pytest.approx(float(np.median(present_dice)))
    assert summary["n_false_positive"] == 1 and summary["false_positive_fraction"] == 1.0
    assert fp["predicted_volume_ml"] > 0 and summary["false_positive_volume_ml"] == pytest.approx(fp["predicted_volume_ml"])
    on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert on_disk["per_study"]["P1"]["n_false_positive"] == 1
    with open(tmp_path / "eval" / "per_lesion.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["lesion_id"] == "2" and r["target_scan"] == "t2")
    assert row["outcome"] == "false_positive" and row["dice"] == ""
    md = (tmp_path / "eval" / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Study"))
    cells = next(line for line in md.splitlines() if line.startswith("| P1"))
    columns = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in cells.split("|")]))
    assert columns["False pos."] == "1" and columns["Pairs"] == "3"
