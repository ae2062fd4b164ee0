"""Every scenario file runs end to end, shrunk; bad configs fail with a clear message."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import pytest

import overfit
from overfit import cli, experiments, scenario

SCENARIOS = sorted(Path(__file__).parent.parent.joinpath("scenarios").glob("*.toml"))
SHRINK = ["sweep.seeds=3", "train.epochs=4", "train.eval_every=2", "data.n_test=50"]
# a trained width sweep compiles one program per width group (five in the file): two
# groups run the same code in 40 % of the time
FEWER = {"double_descent_width": ["sweep.capacity=[4, 8, 128, 256]"]}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_every_scenario_runs_shrunk(path, tmp_path):
    sc = scenario.load(path, [*SHRINK, *FEWER.get(path.stem, [])])
    folder = scenario.run(sc, tmp_path)
    meta = json.loads((folder / "results.json").read_text())
    assert meta["scenario"]["name"] == sc.name
    assert meta["environment"]["versions"]["jax"]
    # 0 when an earlier test in this process compiled the same programs
    assert 0 <= meta["compile_time_s"] <= meta["wall_time_s"]
    for figure in meta["figures"]:
        assert (folder / figure).stat().st_size > 1000
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert rows, "empty results table"
    assert not list(tmp_path.glob(".*partial")), "a partial folder was left behind"
    if path.stem == "remedies":  # four arms share one call: each got its own hparams
        sizes = {arm: {int(float(r["n_params"])) for r in rows if r["remedy"] == arm}
                 for arm in experiments.REMEDIES}

        def mlp_1ww1(w):
            return {(w + w) + (w * w + w) + (w + 1)}

        assert sizes == {**dict.fromkeys(experiments.REMEDIES, mlp_1ww1(sc.model.hidden[0])),
                         "smaller model": mlp_1ww1(sc.sweep.capacity[0])}


def test_five_points_pattern_holds_over_many_draws():
    """GROUND_TRUTH §7: the 7-parameter model interpolates and generalises worse than the line."""
    sc = scenario.load(SCENARIOS[[p.stem for p in SCENARIOS].index("five_points")])
    ratios = []
    for seed in range(30):
        rows, figures = experiments.five_points(scenario.from_dict({**_raw(sc), "seed": seed}))
        plt.close(figures["five_points"])
        line, curve = rows
        assert (line["n_params"], curve["n_params"]) == (2, 7)
        assert curve["train_mse"] < 1e-9  # passes through all five points
        assert line["train_mse"] > 1e-3
        ratios.append(curve["val_mse"] / line["val_mse"])
    assert np.median(ratios) > 2.0


def test_capacity_curve_is_a_u(tmp_path):
    sc = scenario.load(SCENARIOS[[p.stem for p in SCENARIOS].index("capacity_curve")],
                       ["sweep.seeds=40"])
    rows, _ = experiments.capacity_curve(sc)
    degrees = sorted({r["degree"] for r in rows})
    med = {k: np.array([np.median([r[k] for r in rows if r["degree"] == d]) for d in degrees])
           for k in ("train_mse", "val_mse")}
    best = degrees[int(np.argmin(med["val_mse"]))]
    assert 3 <= best <= 8  # cos(1.5 pi x) on [0, 1] needs a few degrees, not 15
    assert med["val_mse"][-1] > 10 * med["val_mse"].min()  # the right arm of the U
    assert med["val_mse"][0] > 10 * med["val_mse"].min()  # the left arm
    assert np.all(np.diff(med["train_mse"][:-3]) <= 1e-6)  # nested models: train error falls
    # noise std 0.1: at the best degree the validation error is near the noise floor 0.01
    assert 0.008 < med["val_mse"].min() < 0.03


def test_capacity_curve_of_a_classifier_plots_accuracy():
    """Class labels give accuracy curves (it read train_mse and crashed after the sweep):
    on two moons a width-1 tanh net is a linear boundary, a width-32 one fits the bend."""
    sc = scenario.from_dict({
        "name": "t", "kind": "capacity_curve",
        "data": {"source": "classification", "shape": "moons", "n_train": 80, "noise": 0.1},
        "model": {"kind": "mlp", "hidden": [32]},
        "train": {"epochs": 400, "learning_rate": 0.05, "eval_every": 400},
        "sweep": {"capacity": [1, 32], "seeds": 3}})
    rows, figures = experiments.capacity_curve(sc)
    (ax,) = figures["capacity_curve"].axes
    assert "test (clean labels)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(figures["capacity_curve"])
    acc = {w: np.array([[r[k] for k in ("train_accuracy", "test_accuracy_clean")]
                        for r in rows if r["width"] == w]) for w in (1, 32)}
    assert np.all((acc[1] > 0.7) & (acc[1] < 0.95))  # a line through two moons
    assert np.all(acc[32] > 0.97)


def _raw(sc):
    import dataclasses

    return dataclasses.asdict(sc)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.noise=-1", r"data.noise=-1.0 is out of range"),
        ("data.flip=1.0", r"data.flip=1.0 is out of range; allowed values lie in \[0, 1\)"),
        ("data.n_train=0", r"data.n_train=0 is out of range"),
        ("model.max_degree=-2", r"model.max_degree=-2"),
        ("data.nosie=0.1", r"Did you mean 'noise'"),
        ("trian.epochs=3", r"Did you mean 'train'"),
        ("data.target='coss'", r"Did you mean 'cos'"),
        ("train.epochs='ten'", r"train.epochs='ten' must be of type int"),
        ("name='../../etc'", r"name='../../etc' must be letters"),
        ("train.eval_every=7", r"train.eval_every=7 must divide train.epochs="),
        (["early_stopping.rule='UP'", "early_stopping.alpha=2.5"],
         r"early_stopping.alpha=2.5: rule 'UP'.*whole number"),
        ("seed=18446744073709551616", r"seed=18446744073709551616 is out of range"),
        ("data.domain=[0.0, inf]", r"data.domain=\[0.0, inf\] must be \[lo, hi\] with finite"),
        ("data.domain=[1.0, 1.0]", r"data.domain=\[1.0, 1.0\] must be \[lo, hi\] with finite"),
        # least squares on 0/1 labels scored as logits: accuracies of nothing
        ("train.method='closed_form'", r"train.method='closed_form' is least squares on "
         r"regression targets; data.source='classification' gives class labels"),
        (["data.source='real'", "data.flip=0", "train.method='closed_form'"],
         r"data.source='real', name='digits' gives class labels"),
        (["kind='training_curves'", "train.method='closed_form'"],
         r"kind='training_curves' follows training epoch by epoch; train.method='closed_form'"),
        # a score regressed on the 0/1 labels read as a logit: decompositions of nothing
        ("train.loss='mse'", r"kind='bias_variance' decomposes a classifier's logits; "
         r"train.loss='mse' on class labels gives none"),
        (["kind='dropout'", "model.kind='polynomial'"],
         r"kind='dropout' needs model.kind='mlp' .*got model.kind='polynomial'"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(override, message):
    with pytest.raises(ValueError, match=message):
        scenario.load(SCENARIOS[0], [override] if isinstance(override, str) else override)


@pytest.mark.parametrize("stem, overrides, message", [
    ("training_curves", ["sweep.l2=[0.1]"],
     r"sweep.l2=\[0.1\] is not used by kind='training_curves', which sweeps nothing"),
    ("capacity_curve", ["sweep.drop_rate=[0.5]"],
     r"sweep.drop_rate=\[0.5\] is not used by kind='capacity_curve', which sweeps "
     r"sweep.capacity; remove it"),
    ("capacity_curve", ["sweep.inits=3"], r"sweep.inits=3 is used by kind='bias_variance' only"),
    ("training_curves", ["sweep.capacity=[3, 9]"],
     r"sweep.capacity=\[3, 9\] is not swept by kind='training_curves': only its largest"),
    ("capacity_curve", ["train.l1=0.01", "train.input_noise=0.1"],
     r"train.l1=0.01, train.input_noise=0.1 has no effect with train.method='closed_form'"),
    ("capacity_curve", ["early_stopping.rule='patience'"],
     r"early_stopping.rule='patience' has no effect with train.method='closed_form'"),
    ("training_curves", ["data.flip=0.2"],
     r"data.flip=0.2 is not used by data.source='preset' \(only by 'classification'\); "
     r"remove it or use data.flip_y\."),
    ("capacity_curve", ["data.label_noise=0.1"],
     r"data.label_noise=0.1 is not used by data.source='regression' \(only by 'real'\); "
     r"remove it\."),
])
def test_a_field_the_scenario_would_ignore_is_refused(stem, overrides, message):
    """A remedy or sweep that looks switched on but is not would draw a figure claiming
    what it did not do: refused when the file is loaded (so `overfit validate` sees it)."""
    path = SCENARIOS[[p.stem for p in SCENARIOS].index(stem)]
    scenario.load(path)  # the file alone is fine
    scenario.load(path, ["sweep.capacity=[8]"])  # one capacity sizes the model: allowed
    with pytest.raises(ValueError, match=message):
        scenario.load(path, overrides)


@pytest.mark.parametrize("overrides, message", [
    # each crashed or failed only when run (after a gallery's earlier scenarios), or ran
    # and silently ignored a field: all refused when the file is loaded now
    (["kind='five_points'", "data.source='classification'"],
     r"kind='five_points' .* needs data.source='regression'; got 'classification'"),
    (["kind='five_points'", "model.kind='mlp'", "sweep.capacity=[3]"],
     r"model.kind, sweep.capacity is not used by kind='five_points'"),
    (["data.source='linear'"], r"model.kind='polynomial' needs 1-D inputs; "
     r"data.source='linear' gives 10 inputs"),
    (["model.kind='mlp'", "sweep.capacity=[0, 4]"],
     r"sweep.capacity=\[0, 4\]: a width of 0 is no model"),
    (["model.kind='mlp'", "model.hidden=[]", "sweep.capacity=[1, 4]"],
     r"model.hidden=\[\] has no hidden layer"),
    (["data.source='real'", "data.name='diabetes'", "model.kind='linear'",
      "data.val_frac=0.5", "data.test_frac=0.5"], r"leave no training split"),
    (["train.loss='ce'"], r"train.loss='ce' needs class labels; data.source='regression'"),
    (["early_stopping.rule='patience'", "early_stopping.monitor='val_accuracy'"],
     r"monitor='val_accuracy': regression data is scored by mse; use val_loss or val_mse"),
    (["early_stopping.rule='GL'", "early_stopping.monitor='train_loss'"],
     r"rule 'GL' \(Prechelt\) needs a validation error to minimise"),
    (["data.source='classification'", "train.loss='ce'", "model.kind='mlp'",
      "early_stopping.rule='UP'", "early_stopping.alpha=2",
      "early_stopping.monitor='val_accuracy'"],
     r"monitor='val_accuracy': rule 'UP' \(Prechelt\)"),
    (["kind='bias_variance'", "early_stopping.rule='patience'", "data.n_val=0"],
     r"data.n_val=0 draws none"),
    (["data.n_val=0"], r"kind='capacity_curve' draws \(or chooses by\) validation scores"),
    (["kind='early_stopping'"], r"kind='early_stopping' needs early_stopping.rule"),
    (["kind='validation_curve'", "sweep.capacity=[]"],
     r"kind='validation_curve' needs sweep.l2 \(a non-empty list\)"),
    (["kind='double_descent'", "sweep.capacity=[]", "sweep.n_train=[5, 10]"],
     r"sweeps sweep.n_train with train.method='closed_form' only"),
    (["data.source='preset'", "data.noise=0.9", "model.kind='mlp'"],
     r"data.noise=0.9 is not used by data.source='preset' \(only by 'regression', "),
    (["model.drop_rate=0.5"], r"model.drop_rate=0.5 is not used by model.kind='polynomial'"),
    (["kind='dropout'", "model.kind='mlp'", "model.drop_rate=0.9", "sweep.capacity=[]",
      "sweep.drop_rate=[0.0, 0.5]"], r"model.drop_rate=0.9 is replaced by sweep.drop_rate"),
    (["kind='double_descent'", "train.method='closed_form'", "train.l2=5.0"],
     r"train.l2=5.0 is not used by kind='double_descent'"),
    (["train.method='closed_form'", "train.loss='ce'"],
     r"train.loss='ce' has no effect with train.method='closed_form'"),
])
def test_combinations_are_refused_when_the_file_is_loaded(overrides, message):
    base = {"name": "t", "kind": "capacity_curve", "sweep": {"capacity": [2, 4]}}
    with pytest.raises(ValueError, match=message):
        scenario.from_dict(scenario.apply_overrides(base, overrides))


def test_budget_knobs_pass_where_they_are_not_read():
    """One --set shrinks a whole gallery: epochs on a solve, split sizes on a fixed data
    set claim nothing in a figure, and are let through."""
    base = {"name": "t", "kind": "capacity_curve", "sweep": {"capacity": [2, 4]},
            "train": {"method": "closed_form"}}
    scenario.from_dict(scenario.apply_overrides(base, SHRINK))
    scenario.from_dict(scenario.apply_overrides(
        {**base, "kind": "five_points", "sweep": {}}, SHRINK))
    scenario.from_dict(scenario.apply_overrides(
        {**base, "model": {"kind": "linear"}},
        ["data.source='real'", "data.name='diabetes'", *SHRINK]))


def test_remedies_need_an_mlp_and_a_generator():
    path = SCENARIOS[[p.stem for p in SCENARIOS].index("remedies")]
    with pytest.raises(ValueError, match=r"needs model.kind='mlp' .* got model.kind='polyn"):
        experiments.remedies(scenario.load(path, ["model.kind='polynomial'"]))
    # a fixed data set has no more data to give: the arm would repeat the baseline
    with pytest.raises(ValueError, match=r"more-data arm; got data.source='real'"):
        experiments.remedies(scenario.load(path, ["data.source='real'"]))


@pytest.mark.parametrize("overrides, message", [
    (["sweep.l2=[0.01, 0.1]"], r"takes one value in sweep.l2 .*got sweep.l2=\[0.01, 0.1\]"),
    (["sweep.n_train=[10]"], r"sweep.n_train=\[10\] must be at least data.n_train=20"),
])
def test_remedies_take_one_setting_per_remedy(overrides, message):
    """A second value would be ignored (the figure has one bar per remedy); more data
    must be more."""
    path = SCENARIOS[[p.stem for p in SCENARIOS].index("remedies")]
    with pytest.raises(ValueError, match=message):
        experiments.remedies(scenario.load(path, [*overrides, "data.n_train=20"]))


def test_remedy_arms_differ_by_their_remedy_alone():
    """Repeat s of every arm starts alike on the same points: a remedy turned off (no L2,
    no dropout, no extra points) gives the baseline's numbers; the smaller model does not."""
    path = SCENARIOS[[p.stem for p in SCENARIOS].index("remedies")]
    sc = scenario.load(path, [*SHRINK, "train.epochs=30", "sweep.l2=[0.0]",
                              "sweep.drop_rate=[0.0]", "sweep.n_train=[20]"])
    assert sc.data.n_train == 20 and sc.train.l2 == 0
    rows, figures = experiments.remedies(sc)
    for fig in figures.values():
        plt.close(fig)
    arm = {name: np.array([[r[k] for k in ("train_mse", "val_mse", "test_risk")]
                           for r in rows if r["remedy"] == name]) for name in experiments.REMEDIES}
    assert arm["baseline"].shape == (3, 3) and np.all(np.diff(arm["baseline"][:, 0]) != 0)
    for name in ("L2", "dropout", "more data"):
        np.testing.assert_allclose(arm[name], arm["baseline"], rtol=1e-5, err_msg=name)
    assert np.all(np.abs(arm["smaller model"] - arm["baseline"]) > 1e-4)


@pytest.mark.parametrize("kind,sweep,field", [
    ("bias_variance", "sweep.noise=[0.1, 0.2]", "noise"),
    ("bias_variance", "sweep.flip=[0.0, 0.1]", "flip"),
    ("double_descent", "sweep.noise=[0.1, 0.2]", "noise"),
])
def test_a_data_knob_the_source_ignores_is_refused(kind, sweep, field):
    """Sweeping the noise of a fixed data set, or label flips of a regression, would
    train every value on the same data: a flat curve that looks like a finding."""
    source = "regression" if field == "flip" else "real"
    table = scenario.apply_overrides(
        {"name": "t", "kind": kind, "train": {"method": "closed_form"},
         "model": {"kind": "linear"}, "sweep": {"capacity": [] if kind == "bias_variance"
                                                else [2, 4]}},
        [f"data.source='{source}'", *(["data.name='diabetes'"] if source == "real" else []),
         sweep])
    with pytest.raises(ValueError, match=rf"varies data.{field}, which "
                                         rf"data.source='{source}' does not use"):
        scenario.from_dict(table)  # when the file is loaded: `overfit validate` sees it


def test_classification_loss_on_regression_data_is_rejected():
    sc = scenario.load(SCENARIOS[0], ["data.source='regression'", "data.flip=0.0",
                                      "data.shape='circle'", "model.kind='mlp'"])
    data = experiments.draw(sc, jax.random.key(0), 2)
    with pytest.raises(ValueError, match="needs classification data"):
        overfit.fit(overfit.mlp(1, (4,)), data, key=jax.random.key(0), loss="ce")


def test_results_report_the_time_spent_compiling(tmp_path):
    # 6 epochs are in no other test: this process has not compiled these programs yet
    sc = scenario.load(SCENARIOS[[p.stem for p in SCENARIOS].index("training_curves")],
                       ["sweep.seeds=2", "train.epochs=6", "train.eval_every=3"])
    meta = json.loads((scenario.run(sc, tmp_path) / "results.json").read_text())
    assert 0 < meta["compile_time_s"] <= meta["wall_time_s"]  # tracing alone takes time


def test_cli_gallery_writes_index_and_reports_errors(tmp_path, capsys):
    src = tmp_path / "scenarios"
    src.mkdir()
    (src / "a.toml").write_text((SCENARIOS[0]).read_text())
    # valid as a file, but diabetes has no 100000 training points: it fails when run, after
    # a.toml has finished
    (src / "b.toml").write_text('name = "broken"\nkind = "learning_curves"\n'
                                '[data]\nsource = "real"\nname = "diabetes"\n'
                                '[model]\nkind = "linear"\n[train]\nmethod = "closed_form"\n'
                                '[sweep]\nn_train = [10, 100000]\n')
    out = tmp_path / "plots"
    shrink = sum((["--set", s] for s in SHRINK), [])
    capsys.readouterr()
    assert cli.main(["gallery", "--scenarios", str(src), "--out", str(out), *shrink]) == 2
    err = capsys.readouterr().err
    assert f"1 scenario(s) failed:\n  {src / 'b.toml'} (broken): " in err
    assert "asks for up to 100000 training points" in err
    index = (out / "index.html").read_text()  # the rest of the gallery is still written
    name = scenario.load(SCENARIOS[0]).name
    assert f"{name}/" in index and ".png" in index and "broken" not in index
    assert not (out / "broken").exists()
    assert cli.main(["run", str(SCENARIOS[0]), "--set", "data.noise=-1"]) == 2
    assert f"{SCENARIOS[0]}: data.noise" in capsys.readouterr().err
    # two files with one name would write one folder
    assert cli.main(["run", str(src / "a.toml"), str(SCENARIOS[0]), "--out", str(out)]) == 2
    assert "appear more than once" in capsys.readouterr().err


def test_cli_validate_and_list_report_every_bad_file(tmp_path, capsys):
    """The first bad file used to stop the loop: the errors after it went unseen and the
    good files after it were never reported ok."""
    good = tmp_path / "a.toml"
    good.write_text(SCENARIOS[0].read_text())
    (tmp_path / "b.toml").write_text('name = "b"\nkind = "nope"\n')
    (tmp_path / "c.toml").write_text('name = "c"\nkind = "capacity_curve"\n[data]\nnoise = -1\n')
    files = [str(tmp_path / n) for n in ("b.toml", "c.toml", "a.toml")]
    assert cli.main(["validate", *files]) == 2
    out, err = capsys.readouterr()
    assert "kind='nope'" in err and "data.noise" in err
    assert out.strip() == f"{good}: ok"
    assert "2 scenario(s) failed" in err
    assert cli.main(["list", "--scenarios", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}  [") and "kind='nope'" in err and "data.noise" in err


def test_cli_rough_edges_give_one_line_errors(tmp_path, capsys):
    good = str(SCENARIOS[0])
    # validate checks an override as run would (it was "unrecognized arguments")
    assert cli.main(["validate", good, "--set", "sweep.seeds=3"]) == 0
    assert cli.main(["validate", good, "--set", "data.noise=-1"]) == 2
    assert "data.noise=-1.0 is out of range" in capsys.readouterr().err
    # list of a folder with no scenarios printed nothing and exited 0, unlike gallery
    assert cli.main(["list", "--scenarios", str(tmp_path / "nowhere")]) == 2
    assert "no scenario files in" in capsys.readouterr().err
    # a broken TOML value became the literal string '"a'
    assert cli.main(["validate", good, "--set", 'title="a']) == 2
    assert "--set 'title=\"a': '\"a' is not a TOML value" in capsys.readouterr().err
    # the list element is named, and int fields are bounded by what JAX can index
    assert cli.main(["validate", good, "--set", "sweep.capacity=[1, 2, -1]"]) == 2
    assert "sweep.capacity[2]=-1 is out of range" in capsys.readouterr().err
    assert cli.main(["validate", good, "--set", "sweep.seeds=100000000000000000000"]) == 2
    assert "allowed values lie in [1, 2147483647]." in capsys.readouterr().err
    assert cli.main(["options"]) == 0
    assert "| [1, 2147483647] repeats per grid point" in capsys.readouterr().out
    # an output path that is a file: one line, no traceback
    (tmp_path / "afile").write_text("")
    five = str(SCENARIOS[[p.stem for p in SCENARIOS].index("five_points")])
    assert cli.main(["run", five, "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert "NotADirectoryError" in err and "Traceback" not in err


def test_a_changed_field_is_named_in_the_refusal(tmp_path):
    sc = scenario.load(SCENARIOS[[p.stem for p in SCENARIOS].index("five_points")])
    folder = scenario.run(sc, tmp_path)
    # the precision the solves ran in, not JAX's global default (x64 off)
    meta = json.loads((folder / "results.json").read_text())
    assert meta["precision"] == "float64" and meta["environment"]["x64"] is False
    with pytest.raises(ValueError, match=r"\(title differs\); pass --force"):
        scenario.run(dataclasses.replace(sc, title="another"), tmp_path)


def test_the_interrupt_message_says_what_a_rerun_reuses(monkeypatch, capsys):
    """With --force, finished scenarios are recomputed: only the sweep chunks are reused."""
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_run", interrupted)
    for flags, kept in (([], "stored finished scenarios and sweep chunks are kept"),
                        (["--force"], "stored sweep chunks are kept")):
        assert cli.main(["run", str(SCENARIOS[0]), *flags]) == 130
        assert f"overfit: interrupted: {kept}, and the same command" in capsys.readouterr().err


def test_interrupted_run_leaves_old_results_untouched(tmp_path, monkeypatch):
    sc = scenario.load(SCENARIOS[0], SHRINK)
    folder = scenario.run(sc, tmp_path)
    before = (folder / "results.csv").read_text()

    def boom(_):
        raise KeyboardInterrupt

    monkeypatch.setitem(experiments.EXPERIMENTS, sc.kind, boom)
    with pytest.raises(KeyboardInterrupt):
        scenario.run(sc, tmp_path, force=True)
    assert (folder / "results.csv").read_text() == before
    assert json.loads((folder / "results.json").read_text())["scenario"]["name"] == sc.name


def test_a_run_killed_between_its_renames_keeps_the_old_results(tmp_path):
    """Killed after moving the old folder aside and before moving the new one in: the next
    run deleted the complete old results (hidden in .NAME.old) and computed them again."""
    sc = scenario.load(SCENARIOS[[p.stem for p in SCENARIOS].index("five_points")])
    folder = scenario.run(sc, tmp_path)
    stamp = (folder / "results.json").stat().st_mtime_ns
    folder.rename(tmp_path / f".{sc.name}.old")
    assert scenario.run(sc, tmp_path) == folder
    assert (folder / "results.json").stat().st_mtime_ns == stamp  # restored, not recomputed
    assert not (tmp_path / f".{sc.name}.old").exists()


def test_bias_variance_bootstraps_a_fixed_real_data_set():
    sc = scenario.load(SCENARIOS[[p.stem for p in SCENARIOS].index("bias_variance_classification")],
                       ["data.source='real'", "data.flip=0.0", "data.name='wine'",
                        # the generator's knobs, which a fixed data set would ignore
                        "data.shape='circle'", "data.n_train=30", "data.noise=0.1",
                        "sweep.capacity=[2, 16]",
                        "sweep.seeds=4", "train.epochs=20", "train.eval_every=10"])
    rows, figures = experiments.bias_variance(sc)
    plt.close(figures["bias_variance"])
    assert [r["width"] for r in rows] == [2, 16]
    for r in rows:  # Domingos' identity holds on the bootstrap ensemble too
        assert abs(r["0-1_loss"] - r["0-1_bias"] - r["0-1_net_variance"]) < 1e-6
        # Kohavi-Wolpert's terms add up to the same loss (clean labels: no noise term)
        assert abs(r["0-1_loss"] - r["KW_bias2"] - r["KW_variance"]) < 1e-6
        assert abs(r["cross-entropy"] - r["CE_bias"] - r["CE_variance"]) < 1e-4


def test_every_allowed_kind_has_an_experiment():
    assert set(scenario.KINDS) == set(experiments.EXPERIMENTS)


def test_a_finished_run_is_skipped_and_other_results_need_force(tmp_path):
    sc = scenario.load(SCENARIOS[0], SHRINK)
    folder = scenario.run(sc, tmp_path)
    stamp = (folder / "results.json").stat().st_mtime_ns
    assert scenario.cached(sc, tmp_path)
    assert scenario.run(sc, tmp_path) == folder  # same fingerprint: nothing recomputed
    assert (folder / "results.json").stat().st_mtime_ns == stamp
    other = scenario.load(SCENARIOS[0], [*SHRINK, "data.noise=0.7"])
    with pytest.raises(ValueError, match=r"different config \(data.noise differs\).*--force"):
        scenario.run(other, tmp_path)
    meta = json.loads((folder / "results.json").read_text())
    meta["environment"]["versions"]["jax"] = "0.0.1"
    meta["fingerprint"] = "stale"
    (folder / "results.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"another version: jax 0.0.1 \(now "):
        scenario.run(sc, tmp_path)
    scenario.run(sc, tmp_path, force=True)
    assert scenario.cached(sc, tmp_path)


def test_a_scenario_killed_mid_sweep_resumes_from_its_chunks(tmp_path, caplog):
    """SIGKILL `overfit run` once its first chunk of trained members is on disk; a rerun
    loads the stored chunks, trains the rest, and its table equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = SCENARIOS[[p.stem for p in SCENARIOS].index("dropout")]
    sets = ["sweep.seeds=2", "train.epochs=5", "data.n_test=50", "sweep.chunk_size=1"]
    cmd = [sys.executable, "-m", "overfit.cli", "run", str(path),
           *sum((["--set", s] for s in sets), [])]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OVERFIT_NO_COMPILE_CACHE": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 200
    while not list(killed.glob(".dropout.chunks/*/0*.npz")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before writing a chunk"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = len(list(killed.glob(".dropout.chunks/*/0*.npz")))
    assert 1 <= stored < 8 and not (killed / "dropout").exists()
    # the rerun and the uninterrupted run in this process: one compile for both
    sc = scenario.load(path, sets)
    with caplog.at_level(logging.INFO, logger="overfit"):
        scenario.run(sc, killed)
    assert "members loaded from stored chunks" in caplog.text, caplog.text[-2000:]
    scenario.run(sc, tmp_path / "whole")
    assert ((killed / "dropout" / "results.csv").read_bytes()
            == (tmp_path / "whole" / "dropout" / "results.csv").read_bytes())
    assert not (killed / ".dropout.chunks").exists()
    meta = json.loads((killed / "dropout" / "results.json").read_text())
    assert {"members": 8, "chunk_size": 1} in meta["chunks"]  # 4 rates x 2 seeds, as set


def test_a_killed_gallery_resumes_with_identical_results(tmp_path):
    """SIGKILL the gallery after its first scenario; the rerun skips that one, computes
    the rest, and every table equals an uninterrupted run's, byte for byte."""
    import os
    import signal
    import subprocess
    import sys

    src = tmp_path / "scenarios"
    src.mkdir()
    stems = ("capacity_curve", "weight_decay")
    for stem in stems:
        (src / f"{stem}.toml").write_text(
            SCENARIOS[[p.stem for p in SCENARIOS].index(stem)].read_text())
    cmd = [sys.executable, "-m", "overfit.cli", "gallery", "--scenarios", str(src),
           *sum((["--set", s] for s in SHRINK), [])]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "killed")], stdout=subprocess.PIPE,
                            text=True, env=env)
    first = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert " s -> " in first
    resumed = subprocess.run([*cmd, "--out", str(tmp_path / "killed")], capture_output=True,
                             text=True, env=env, check=True).stdout
    assert resumed.count("up to date") == 1, resumed
    subprocess.run([*cmd, "--out", str(tmp_path / "whole")], check=True, env=env,
                   capture_output=True)
    for stem in stems:
        name = scenario.load(src / f"{stem}.toml").name
        assert ((tmp_path / "killed" / name / "results.csv").read_bytes()
                == (tmp_path / "whole" / name / "results.csv").read_bytes())
    assert not list((tmp_path / "killed").glob(".*partial*"))


@pytest.mark.parametrize("value, cached", [("1", False), ("true", False), ("YES", False),
                                           ("0", True), ("", True), ("off", True)])
def test_the_compile_cache_opt_out_reads_like_a_switch(monkeypatch, value, cached):
    """OVERFIT_NO_COMPILE_CACHE=true left the cache on: only "1" opted out."""
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("OVERFIT_NO_COMPILE_CACHE", value)
    set_to = []
    monkeypatch.setattr(jax.config, "update", lambda name, v: set_to.append(name))
    cli._compile_cache()
    assert set_to == (["jax_compilation_cache_dir"] if cached else [])
