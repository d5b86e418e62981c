import json

import numpy as np
import pytest
from typer.testing import CliRunner

from spinedet.runtime.cli import eval_app
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.evaluate import consensus, f1_2d, f1_3d, iom_3d, iom_z, spines_of
from spinedet.runtime.tables import BoxTable, boxes_csv_text, paper_tracking_csv_text, read_box_table


def table(rows, stack=""):
    """rows: (spine_id, z, x0, y0, x1, y1, score)."""
    rows = np.array(rows, dtype=float).reshape(-1, 7)
    return BoxTable.from_rows(rows[:, 0], rows[:, 1], rows[:, 2:6], rows[:, 6], [stack] * len(rows))


def test_iom_z_uses_inclusive_slice_ranges():
    # [2, 5] and [5, 9] share one slice; the shorter range has 4 slices
    assert iom_z([2], [5], [5], [9])[0, 0] == pytest.approx(1 / 4)
    assert iom_z([2], [5], [6], [9])[0, 0] == 0
    assert iom_z([3], [3], [0], [9])[0, 0] == 1  # a one-slice spine inside a long one


def test_3d_box_is_the_mean_of_the_slice_boxes_and_iom_combines_with_f_half():
    d = table([(1, 0, 0, 0, 10, 10, 1), (1, 1, 2, 0, 12, 10, 1)])  # mean box (1, 0, 11, 10)
    g = table([(7, 1, 6, 0, 16, 10, 1), (7, 2, 6, 0, 16, 10, 1), (7, 3, 6, 0, 16, 10, 1)])
    ds, gs = spines_of(d, ""), spines_of(g, "")
    np.testing.assert_allclose(ds.mean_box, [[1, 0, 11, 10]])
    xy, z = 50 / 100, 1 / 2
    assert iom_3d(ds, gs)[0, 0] == pytest.approx(5 * xy * z / (xy + 4 * z))


def test_f1_3d_counts_and_track_score_rule():
    gt = table([(1, 0, 0, 0, 10, 10, 1), (1, 1, 0, 0, 10, 10, 1), (2, 0, 50, 50, 60, 60, 1)])
    pred = table([
        (5, 0, 1, 1, 10, 10, 0.9), (5, 1, 1, 1, 10, 10, 0.9),  # matches spine 1
        (6, 0, 100, 100, 110, 110, 0.8),  # matches nothing: FP
        (7, 0, 50, 50, 60, 60, 0.3), (7, 1, 50, 50, 60, 60, 0.5),  # mean score 0.4: does not count
    ])
    s = f1_3d(pred, gt)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)
    assert s["f1"] == pytest.approx(2 / 4)
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == pytest.approx(0.5)


def test_f1_2d_is_one_to_one():
    pred = [np.array([[0, 0, 10, 10], [1, 1, 10, 10]]), np.zeros((0, 4))]
    gt = [np.array([[0, 0, 10, 10]]), np.array([[5, 5, 9, 9]])]
    s = f1_2d(pred, gt)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)


def test_stacks_must_share_names_when_several():
    a = BoxTable.concatenate([table([(1, 0, 0, 0, 9, 9, 1)], "s1"), table([(1, 0, 0, 0, 9, 9, 1)], "s2")])
    b = BoxTable.concatenate([table([(1, 0, 0, 0, 9, 9, 1)], "t1"), table([(1, 0, 0, 0, 9, 9, 1)], "t2")])
    with pytest.raises(SpineDetError):
        f1_3d(a, b)
    assert f1_3d(a, a)["f1"] == 1.0


def test_consensus_votes():
    spine = [(1, 0, 0, 0, 10, 10, 1), (1, 1, 0, 0, 10, 10, 1)]
    other = [(2, 0, 40, 40, 50, 50, 1)]
    annotators = [table(spine + other), table(spine), table([(9, 0, 1, 0, 11, 10, 1), (9, 1, 1, 0, 11, 10, 1)])]
    majority = consensus(annotators, 2)
    assert len(np.unique(majority.spine_id)) == 1
    np.testing.assert_allclose(majority.boxes[0], [1 / 3, 0, 10 + 1 / 3, 10])
    assert len(np.unique(consensus(annotators, 1).spine_id)) == 2
    assert len(np.unique(consensus(annotators, 3).spine_id)) == 1
    with pytest.raises(SpineDetError):
        consensus(annotators, 4)


def test_tables_round_trip_through_both_csv_formats(tmp_path):
    t = table([(3, 4, 1.25, 2.5, 11.75, 12, 0.75), (3, 5, 1, 2, 11, 12, 0.5)], "stackA")
    (tmp_path / "p.csv").write_text(boxes_csv_text(t))
    back = read_box_table(tmp_path / "p.csv")
    np.testing.assert_allclose(back.boxes, t.boxes)
    assert back.z.tolist() == [4, 5] and back.spine_id.tolist() == [3, 3]
    (tmp_path / "q.csv").write_text(paper_tracking_csv_text(t))
    paper = read_box_table(tmp_path / "q.csv")
    assert paper.source.tolist() == ["stackA", "stackA"] and paper.z.tolist() == [4, 5]


def test_unknown_csv_is_one_clear_error(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SpineDetError, match="x.csv: unknown CSV columns"):
        read_box_table(tmp_path / "x.csv")
    (tmp_path / "y.csv").write_text("spine_id,z,xmin,ymin,xmax,ymax,score\n1,zero,1,2,3,4,0.5\n")
    with pytest.raises(SpineDetError, match="y.csv: malformed row"):
        read_box_table(tmp_path / "y.csv")


@pytest.mark.shared
def test_paper_fixture_reproduces_published_f1_3d(shared_data):
    folder = shared_data / "paper-tracking"
    s = f1_3d(read_box_table(folder / "model_predictions.csv"), read_box_table(folder / "gt_max.csv"))
    assert (s["tp"], s["fp"], s["fn"]) == (53, 10, 2)
    assert round(s["f1"], 4) == 0.8983
    assert round(s["precision"], 4) == 0.8413
    assert round(s["recall"], 4) == 0.9636


@pytest.mark.shared
def test_spine_eval_json_on_paper_fixture(shared_data):
    folder = shared_data / "paper-tracking"
    result = CliRunner().invoke(eval_app, ["--gt", str(folder / "gt_max.csv"),
                                           "--pred", str(folder / "model_predictions.csv"), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert {k: s[k] for k in ("tp", "fp", "fn")} == {"tp": 53, "fp": 10, "fn": 2}
    assert round(s["f1"], 4) == 0.8983


def test_spine_eval_consensus_command(tmp_path):
    spine = [(1, 0, 0, 0, 10, 10, 1), (1, 1, 0, 0, 10, 10, 1)]
    paths = []
    for k, rows in enumerate([spine + [(2, 0, 40, 40, 50, 50, 1)], spine, spine]):
        paths.append(tmp_path / f"a{k}.csv")
        paths[-1].write_text(boxes_csv_text(table(rows)))
    result = CliRunner().invoke(eval_app, ["consensus", *map(str, paths), "--min-votes", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "consensus-3of3.csv"  # --out is a folder, as in every command
    agreed = read_box_table(out)
    assert np.unique(agreed.spine_id).tolist() == [1]
    result = CliRunner().invoke(eval_app, ["--gt", str(out), "--pred", str(paths[0]), "--json"])
    s = json.loads(result.stdout)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 0)


def test_spine_eval_explains_a_projection_scored_in_3d(tmp_path):
    """spine-run --mip output against 3D ground truth: a note says why F1-3D is 0, --projected scores the plane."""
    gt = table([(1, z, 10, 10, 20, 20, 1) for z in range(5)] + [(2, z, 40, 40, 52, 50, 1) for z in range(3, 9)])
    mip = table([(1, 0, 10, 11, 20, 21, 0.9), (2, 0, 40, 40, 51, 50, 0.8)])
    (tmp_path / "gt.csv").write_text(boxes_csv_text(gt))
    (tmp_path / "mip.csv").write_text(boxes_csv_text(mip))
    args = ["--gt", str(tmp_path / "gt.csv"), "--pred", str(tmp_path / "mip.csv")]
    result = CliRunner().invoke(eval_app, args)
    assert result.exit_code == 0
    assert "spine-eval: note: every detection lies in slice 0" in result.stderr and "--projected" in result.stderr
    assert "F1-3D 0.5000" in result.stdout  # spine 1 overlaps slice 0 by chance; spine 2 does not
    result = CliRunner().invoke(eval_app, args + ["--projected", "--json"])
    s = json.loads(result.stdout)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0) and s["notes"] == []


def test_spine_eval_bad_file_is_one_line(tmp_path):
    result = CliRunner().invoke(eval_app, ["--gt", str(tmp_path / "missing.csv"), "--pred", str(tmp_path / "p.csv")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "missing.csv: no such file" in result.stderr
