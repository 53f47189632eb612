"""The bad-input review (shared/reviews/badinput.md): every case through the CLI, in process.

Each test names the defect it reproduces (H = high, M = medium, L = low) and checks the exit code,
that the message names what the user typed, and the files before and after.
"""

import errno
import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from trtquant import cli
from trtquant.core import fileio
from trtquant.core.cache import LINE_BREAKS, TrtCache, read_ranges_json, read_trt_cache

from badinput_models import tiny_model

T = ["--no-progress"]


def run(args, capsys):
    rc = cli.main([str(a) for a in args])
    o = capsys.readouterr()
    return rc, o.out, o.err


def argparse_error(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """A scratch folder with tiny models, arrays, a calibrated cache and user files."""
    d = tmp_path_factory.mktemp("bad")
    tiny_model(d / "tiny.onnx")
    tiny_model(d / "u8.onnx", input_type=2)
    tiny_model(d / "b1.onnx", batch=1)
    tiny_model(d / "two.onnx", two_inputs=True)
    tiny_model(d / "u2028.onnx", conv_out="conv\u2028out")
    rng = np.random.default_rng(0)
    np.savez(d / "u8.npz", images=rng.integers(0, 256, (4, 224, 224, 3), dtype=np.uint8))
    np.save(d / "u8_3d_single.npy", rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    np.savez(d / "biglabels.npz", images=rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8),
             labels=np.array([5000, 5001]))
    np.save(d / "raw255.npy", rng.uniform(0, 255, (2, 3, 224, 224)).astype(np.float32))
    (d / "text.npy").write_text("hello, not numpy\n")
    (d / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"JFIF" * 100)
    (d / "settings.json").write_text('{"theme": "dark"}\n')
    assert cli.main(["calibrate", "--onnx", str(d / "tiny.onnx"), "--num-images", "4", "--cache", str(d / "base.bin"),
                     "--stats", str(d / "base.stats.npz"), *T]) == 0
    return d


def tiny(w):
    return ["--onnx", w / "tiny.onnx", "--num-images", "4", *T]


# ------------------------------------------------------------------------------------------------
# high
# ------------------------------------------------------------------------------------------------

def test_H1_cache_convert_refuses_files_of_another_kind(w, tmp_path, capsys):
    shutil.copy(w / "tiny.onnx", tmp_path / "mymodel.onnx")
    shutil.copy(w / "photo.jpg", tmp_path / "photo.jpg")
    shutil.copy(w / "settings.json", tmp_path / "settings.json")
    before = snapshot(tmp_path)
    for name in ("mymodel.onnx", "photo.jpg", "settings.json"):
        rc, _, err = run(["cache", "convert", w / "base.bin", "--out", tmp_path / name,
                          *(["--onnx", w / "tiny.onnx"] if name.endswith(".onnx") else [])], capsys)
        assert rc == 2 and "refusing to overwrite a file of another kind" in err and f"--out {tmp_path / name}" in err
    assert snapshot(tmp_path) == before
    rc, out, _ = run(["cache", "convert", w / "base.bin", "--out", tmp_path / "photo.jpg", "--force"], capsys)
    assert rc == 0 and read_trt_cache(tmp_path / "photo.jpg").scales == read_trt_cache(w / "base.bin").scales
    # its own kind is still replaced without --force (the documented rule)
    assert run(["cache", "convert", w / "base.bin", "--out", tmp_path / "photo.jpg"], capsys)[0] == 0


def test_H2_stats_never_replaces_data_npz(w, tmp_path, capsys):
    shutil.copy(w / "u8.npz", tmp_path / "mydata.npz")
    before = (tmp_path / "mydata.npz").read_bytes()
    rc, _, err = run(["calibrate", *tiny(w), "--data", tmp_path / "mydata.npz", "--cache", tmp_path / "r5.bin",
                      "--stats", tmp_path / "mydata.npz"], capsys)
    assert rc == 2 and f"--stats {tmp_path / 'mydata.npz'}" in err and "another kind" in err
    assert (tmp_path / "mydata.npz").read_bytes() == before and not (tmp_path / "r5.bin").exists()
    # a statistics file is the same kind: replaced without --force
    shutil.copy(w / "base.stats.npz", tmp_path / "s.npz")
    assert run(["calibrate", *tiny(w), "--cache", tmp_path / "r6.bin", "--stats", tmp_path / "s.npz"], capsys)[0] == 0


@pytest.mark.parametrize("flags", [("--cache", "same.json", "--ranges", "same.json"),
                                   ("--cache", "same2.bin", "--stats", "same2.bin"),
                                   ("--cache", "c.bin", "--ranges", "./c.bin")])
def test_H3_two_outputs_on_one_path_are_refused(w, tmp_path, capsys, flags):
    args = [tmp_path / a if not a.startswith("--") else a for a in flags]
    rc, _, err = run(["calibrate", *tiny(w), *args], capsys)
    assert rc == 2 and "two outputs on one path" in err and flags[0] in err and flags[2] in err
    assert list(tmp_path.iterdir()) == []


def test_H4_ambiguous_3d_uint8_array_is_refused_with_its_reading(w, tmp_path, capsys):
    rc, _, err = run(["calibrate", *tiny(w), "--data", w / "u8_3d_single.npy", "--cache", tmp_path / "a.bin"], capsys)
    assert rc == 2 and "ambiguous image array layout" in err and "256 greyscale images of 256x3" in err
    assert "--layout HWC" in err and not (tmp_path / "a.bin").exists()
    rc, out, err = run(["calibrate", *tiny(w), "--data", w / "u8_3d_single.npy", "--layout", "HWC",
                        "--cache", tmp_path / "a.bin"], capsys)
    assert rc == 0, err
    assert "| 1 images" in out


def test_H5_data_dir_without_imagenet_val_is_refused(w, tmp_path, capsys):
    for data in ([], ["--data", w / "u8.npz"]):
        rc, _, err = run(["calibrate", *tiny(w), *data, "--data-dir", "/nope", "--cache", tmp_path / "v3.bin"], capsys)
        assert rc == 2 and "--data-dir is only used with --data imagenet_val" in err and "/nope" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("executor", ["torch", "auto"])
def test_H6_non_float_model_input_is_refused(w, tmp_path, capsys, executor):
    rc, _, err = run(["calibrate", "--onnx", w / "u8.onnx", "--executor", executor, "--num-images", "4", *T,
                      "--cache", tmp_path / "m.bin"], capsys)
    assert rc == 2 and "model input 'input'" in err and "got uint8" in err
    assert not (tmp_path / "m.bin").exists()


def _foolbox_jpegs():
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox is not installed")
    return sorted((Path(list(spec.submodule_search_locations)[0]) / "data").glob("imagenet_*.jpg"))


EV = ["--configs", "fp32", "--latency-iters", "1", "--batch-size", "2", *T]


def test_H7_non_wnid_folders_are_not_scored_as_imagenet(w, tmp_path, capsys):
    jpgs = _foolbox_jpegs()
    for name, jpg in (("a_cat", jpgs[0]), ("b_dog", jpgs[1])):
        (tmp_path / "classes2" / name).mkdir(parents=True)
        shutil.copy(jpg, tmp_path / "classes2" / name / jpg.name)
    rc, out, err = run(["evaluate", "--onnx", w / "tiny.onnx", "--data", tmp_path / "classes2", *EV,
                        "--out", tmp_path / "el5"], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "el5" / "results.json").read_text())
    assert doc["data"]["labelled"] is False and doc["metric"] == "agreement with FP32 top-1"
    assert "top-1" not in out.splitlines()[0] and "agreement" in out


def test_H7_labels_outside_the_models_classes_are_refused(w, tmp_path, capsys):
    rc, _, err = run(["evaluate", "--onnx", w / "tiny.onnx", "--data", w / "biglabels.npz", *EV,
                      "--out", tmp_path / "el1"], capsys)
    assert rc == 2 and "labels outside the model's classes" in err and "5000 to 5001" in err and "0..9" in err
    assert not (tmp_path / "el1" / "results.json").exists()


def _complete_evaluation(w, tmp_path, capsys):
    """A complete 2-config evaluation in ev_int/: (its path, the command without --configs, its files)."""
    out = tmp_path / "ev_int"
    base = ["evaluate", "--onnx", w / "tiny.onnx", "--data", w / "u8.npz", "--calib-images", "2",
            "--latency-iters", "1", "--batch-size", "2", *T, "--out", out]
    assert run([*base, "--configs", "fp32,int8:entropy"], capsys)[0] == 0
    return out, base, snapshot(out)


def test_H8_interrupted_evaluate_leaves_the_complete_earlier_set(w, tmp_path, capsys, monkeypatch):
    out, base, before = _complete_evaluation(w, tmp_path, capsys)
    assert {"results.json", "report.md", "report.html", "int8_entropy/calib.bin"} <= set(before)
    from trtquant.quant.engines import registry as backends

    real, calls = backends.build, []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(backends, "build", flaky)
    rc, _, err = run([*base, "--configs", "fp32,int8:entropy,int8:minmax"], capsys)
    assert rc == 2 and "interrupted" in err and "left untouched" in err and "--resume" in err
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "results.partial.json"} == before
    assert [r["config"] for r in json.loads(after["results.partial.json"])["results"]] == ["fp32"]
    monkeypatch.setattr(backends, "build", real)
    rc, _, err = run([*base, "--configs", "fp32,int8:entropy,int8:minmax", "--resume"], capsys)
    assert rc == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert [r["config"] for r in doc["results"]] == ["fp32", "int8:entropy", "int8:minmax"]
    assert not (out / "results.partial.json").exists()


# ------------------------------------------------------------------------------------------------
# systemic guards: no traceback, OS errors, output sets
# ------------------------------------------------------------------------------------------------

def test_unexpected_exception_is_one_line_exit_1_with_saved_traceback(w, capsys, monkeypatch):
    def boom(args):
        raise ValueError("something internal")

    monkeypatch.setattr(cli, "cmd_lint", boom)
    rc, _, err = run(["lint", w / "tiny.onnx"], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "internal error (a bug in trtquant" in err and "ValueError: something internal" in err
    saved = err.split("saved to ")[1].split(";")[0]
    assert "Traceback" in Path(saved).read_text() and "boom" in Path(saved).read_text()
    os.unlink(saved)
    rc, _, err = run(["--debug", "lint", w / "tiny.onnx"], capsys)
    assert rc == 1 and "Traceback (most recent call last)" in err
    os.unlink(err.split("saved to ")[1].split(";")[0].split("\n")[0])


def test_M12_disk_full_leaves_the_earlier_set_untouched(w, tmp_path, capsys, monkeypatch):
    args = ["calibrate", *tiny(w), "--cache", tmp_path / "old.bin", "--stats", tmp_path / "s.npz"]
    assert run(args, capsys)[0] == 0
    before = snapshot(tmp_path)
    real, calls = fileio.OutputSet.stage, []

    def full(self, path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(self, path, data)

    monkeypatch.setattr(fileio.OutputSet, "stage", full)
    rc, _, err = run([*args, "--seed", "3"], capsys)
    assert rc == 2 and "no space left on device" in err and str(tmp_path) in err and "Traceback" not in err
    assert snapshot(tmp_path) == before          # no file replaced, no temporary left


def test_M12_failed_move_restores_the_earlier_set(tmp_path):
    (tmp_path / "a").write_text("old a")
    (tmp_path / "b").write_text("old b")
    outputs = fileio.OutputSet()
    outputs.add(tmp_path / "a", flag="--a")
    outputs.add(tmp_path / "b", flag="--b")
    outputs.stage(tmp_path / "a", "new a")
    outputs.stage(tmp_path / "b", "new b")
    real = os.replace
    moves = []

    def flaky(src, dst):
        moves.append(dst)
        if str(dst) == str(tmp_path / "b") and str(src).endswith(".tmp"):
            raise OSError(errno.EIO, "I/O error", str(dst))
        return real(src, dst)

    os.replace = flaky
    try:
        with pytest.raises(OSError):
            outputs.commit()
    finally:
        os.replace = real
    assert (tmp_path / "a").read_text() == "old a" and (tmp_path / "b").read_text() == "old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_M11_cache_dir_that_is_a_file_is_an_exit_2_message(w, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TRTQUANT_CACHE_DIR", str(w / "photo.jpg"))
    rc, _, err = run(["calibrate", "--num-images", "4", *T, "--cache", tmp_path / "x2.bin"], capsys)
    assert rc == 2 and "photo.jpg" in err and "TRTQUANT_CACHE_DIR" in err and "Traceback" not in err


def test_M5_read_only_output_directory_is_refused_before_work(w, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(ro)) else real(p, mode))
    for args in (["build", "--onnx", w / "tiny.onnx", "--precision", "fp32", "--out", ro / "b"],
                 ["evaluate", "--onnx", w / "tiny.onnx", *EV, "--out", ro / "ev"],
                 ["evaluate", "--onnx", w / "tiny.onnx", *EV, "--out", ro],
                 ["sweep", "--onnx", w / "tiny.onnx", "--out", ro / "s"]):
        rc, _, err = run(args, capsys)
        assert rc == 2 and "not writable" in err and str(ro) in err
    assert list(ro.iterdir()) == []


def test_M17_files_of_another_kind_inside_out_are_refused(w, tmp_path, capsys):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "report.md").write_text("# my notes\n")
    (user / "results.json").write_text('{"mine": 1}\n')
    (user / "notes.txt").write_text("keep\n")
    before = snapshot(user)
    rc, _, err = run(["evaluate", "--onnx", w / "tiny.onnx", "--data", w / "u8.npz", *EV, "--out", user], capsys)
    assert rc == 2 and "refusing to overwrite files of another kind" in err and "report.md" in err
    assert "results.json" in err and "--force" in err
    (user / "plan.json").write_text("{}\n")
    rc, _, err = run(["build", "--onnx", w / "tiny.onnx", "--precision", "fp32", "--out", user], capsys)
    assert rc == 2 and "plan.json" in err
    rc, _, err = run(["sweep", "--onnx", w / "tiny.onnx", "--out", user], capsys)
    assert rc == 2 and "plan.json" in err
    assert snapshot(user) == {**before, "plan.json": b"{}\n"}


def test_M10_resume_over_a_non_results_json(w, tmp_path, capsys):
    (tmp_path / "er3").mkdir()
    (tmp_path / "er3" / "results.json").write_text("[1, 2]\n")
    args = ["evaluate", "--onnx", w / "tiny.onnx", "--data", w / "u8.npz", *EV, "--out", tmp_path / "er3", "--resume"]
    rc, _, err = run(args, capsys)
    assert rc == 2 and "results.json" in err and "another kind" in err
    rc, _, err = run([*args, "--force"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "er3" / "results.json").read_text())["format"] == "trtquant-results/1"


# ------------------------------------------------------------------------------------------------
# flags validated before any work, errors naming the flag
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("verb,flag,value,needle", [
    ("evaluate", "--latency-iters", "0", "expected an integer >= 1"),          # M2
    ("evaluate", "--latency-iters", "-5", "expected an integer >= 1"),
    ("evaluate", "--calib-images", "0", "expected an integer >= 1"),           # L1
    ("evaluate", "--calib-images", "-3", "expected an integer >= 1"),          # L2
    ("evaluate", "--target-drop", "abc", "0.5%rel"),                            # M1
    ("evaluate", "--target-drop", "150%", "between 0 and 100"),                # L2
    ("evaluate", "--target-drop", "nan", "0.5%rel"),
    ("evaluate", "--target-drop", "inf", "0.5%rel"),
    ("evaluate", "--target-drop", "=-1%", "0.5%rel"),
    ("evaluate", "--backend", "onnxrt", "invalid choice"),                      # L4
    ("evaluate", "--batch-size", "0", "expected an integer >= 1"),
    ("evaluate", "--num-images", "0", "expected an integer >= 1"),
    ("sweep", "--margin", "abc", "expected a number"),                          # M7
    ("sweep", "--margin=-1%", None, "expected a number >= 0"),                  # L2
    ("sweep", "--proxy-images", "0", "expected an integer >= 1"),               # M7
    ("sweep", "--proxy-images", "-5", "expected an integer >= 1"),              # L2
    ("sweep", "--time-budget", "-1", "expected a number > 0"),
    ("sweep", "--target-drop", "150%", "between 0 and 100"),
    ("sweep", "--calib-images", "0", "expected an integer >= 1"),               # L1
    ("sweep", "--trt-version", "x.y", "MAJOR.MINOR.PATCH"),                     # M13
    ("sweep", "--validate-backend", "onnx", "invalid choice: 'onnx'"),          # M20
    ("calibrate", "--trt-version", "8.61", "MINOR <= 9"),                       # M19
    ("calibrate", "--trt-version", "99.99.99", "MAJOR <= 11"),
    ("calibrate", "--percentile", "abc", "expected a number"),                  # L1
    ("calibrate", "--cache", "", "expected a path"),                            # L1
    ("cache", "--rel-tol", "-1", "expected a number >= 0"),                     # M8
])
def test_flags_are_validated_by_argparse_naming_the_flag(tmp_path, capsys, verb, flag, value, needle):
    extra = {"calibrate": ["--cache", str(tmp_path / "c.bin")], "evaluate": ["--out", str(tmp_path / "o")],
             "sweep": ["--out", str(tmp_path / "o")], "cache": ["diff", "a", "b"]}[verb]
    args = [verb, *extra, flag] + ([value] if value is not None else [])
    code, err = argparse_error(args, capsys)
    name = flag.split("=")[0]
    assert code == 2 and f"argument {name}" in err and needle in err, err
    assert "_percent" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_M1_evaluate_takes_every_target_form_and_names_the_flag_on_a_bad_one(w, tmp_path, capsys):
    # evaluate and sweep share one grammar (core.targets): the forms sweep takes are valid here too
    for value in ("0.5%rel", "agree:99%", "sqnr:30dB", "cosine:0.999"):
        with pytest.raises(SystemExit) as exc:
            run(["evaluate", "--onnx", w / "tiny.onnx", *EV, "--target-drop", value + "x", "--out", tmp_path / "e1"], capsys)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "--target-drop" in err and "sqnr:30dB" in err, err
    assert not (tmp_path / "e1").exists()


def test_L2_build_flags_without_effect_are_refused(w, tmp_path, capsys):
    for flag, value in (("--torch-precision", "bf16"), ("--device", "cuda")):
        rc, _, err = run(["build", "--onnx", w / "tiny.onnx", "--precision", "fp32", "--backend", "onnxruntime",
                          flag, value, "--out", tmp_path / "b"], capsys)
        assert rc == 2 and f"{flag} has no effect" in err and "--backend torch" in err
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------
# medium / low cases
# ------------------------------------------------------------------------------------------------

def test_M14_cache_writer_refuses_every_character_the_reader_splits_on(w, tmp_path, capsys):
    for ch in LINE_BREAKS:
        assert len(f"a{ch}b".splitlines()) == 2
        with pytest.raises(Exception) as e:
            TrtCache(8601, "EntropyCalibration2", {f"conv{ch}out": 0.01}).to_text()
        assert type(e.value).__name__ == "CacheFormatError"
    good = TrtCache(8601, "EntropyCalibration2", {"a: b\tc": 0.5, " lead": 0.25})
    assert TrtCache.parse(good.to_text()).scales == good.scales
    rc, _, err = run(["calibrate", "--onnx", w / "u2028.onnx", "--num-images", "4", *T, "--cache",
                      tmp_path / "u2028.bin"], capsys)
    assert rc == 2 and "cannot be written to a calibration cache" in err and "\\u2028" in err
    assert list(tmp_path.iterdir()) == []


def test_M16_from_stats_refuses_flags_it_would_ignore(w, tmp_path, capsys):
    for extra in (["--onnx-out", tmp_path / "fs3.onnx"], ["--model", "efficientnet_lite0"],
                  ["--data", "/nonexistent"], ["--num-images", "3"], ["--num-bins", "4096"]):
        rc, _, err = run(["calibrate", "--from-stats", w / "base.stats.npz", "--cache", tmp_path / "fs3.bin", *extra],
                         capsys)
        assert rc == 2 and "no effect with --from-stats" in err and str(extra[0]) in err
    assert list(tmp_path.iterdir()) == []
    rc, out, _ = run(["calibrate", "--from-stats", w / "base.stats.npz", "--onnx", w / "tiny.onnx", "--method",
                      "minmax", "--cache", tmp_path / "fs4.bin"], capsys)
    assert rc == 0 and "method minmax" in out


def test_M18_unreadable_images_are_listed_in_the_ranges_json(w, tmp_path, capsys):
    jpgs = _foolbox_jpegs()
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for j in jpgs[:3]:
        shutil.copy(j, mixed / j.name)
    (mixed / "broken.jpg").write_bytes(jpgs[0].read_bytes()[:200])
    rc, out, err = run(["calibrate", "--onnx", w / "tiny.onnx", *T, "--data", mixed, "--cache", tmp_path / "d.bin"],
                       capsys)
    assert rc == 0, err
    assert "(1 unreadable skipped)" in out
    skipped = read_ranges_json(tmp_path / "d.bin.ranges.json").meta["skipped"]
    assert len(skipped) == 1 and "broken.jpg" in skipped[0][0]


def test_M21_fixed_batch_model_is_fed_at_its_batch_and_says_so_once(w, tmp_path, capsys, caplog):
    caplog.set_level("WARNING")
    rc, _, err = run(["calibrate", "--onnx", w / "b1.onnx", "--num-images", "4", *T, "--batch-size", "8",
                      "--cache", tmp_path / "m.bin"], capsys)
    assert rc == 0, err
    said = [r.getMessage() for r in caplog.records if "fixed batch" in r.getMessage()]
    assert len(said) == 1 and "feeding batches of 1, not --batch-size 8" in said[0]
    assert read_ranges_json(tmp_path / "m.bin.ranges.json").num_images == 4


def test_M4_M3_L6_model_input_problems_are_exit_2_before_any_output(w, tmp_path, capsys):
    tiny_model(tmp_path / "nhwc.onnx", nhwc=True)      # images come out NCHW: only a model-ready array fits it
    for model, needle in ((w / "two.onnx", "the arrays do not match the model's inputs"),
                          (tmp_path / "nhwc.onnx", "the preprocessing preset cannot produce the model's input")):
        rc, _, err = run(["evaluate", "--onnx", model, "--data", w / "u8.npz", *EV, "--out", tmp_path / "e"], capsys)
        assert rc == 2 and needle in err, err
    for model, needle in ((tmp_path / "nhwc.onnx", "input shape mismatch"),):
        rc, _, err = run(["build", "--onnx", model, "--precision", "fp32", "--out", tmp_path / "b"], capsys)
        assert rc == 2 and needle in err, err
    rc, _, err = run(["calibrate", "--onnx", w / "two.onnx", *T, "--num-images", "2", "--cache", tmp_path / "c.bin"],
                     capsys)
    assert rc == 2 and "a model with several inputs needs named arrays" in err and "'input', 'aux'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nhwc.onnx"]


def test_M6_report_creates_out_and_rejects_malformed_results(w, tmp_path, capsys):
    out = tmp_path / "ev"
    assert run(["evaluate", "--onnx", w / "tiny.onnx", "--data", w / "u8.npz", *EV, "--out", out], capsys)[0] == 0
    rc, text, err = run(["report", out / "results.json", "--out", tmp_path / "rep1"], capsys)
    assert rc == 0, err
    assert (tmp_path / "rep1" / "report.md").read_bytes() == (out / "report.md").read_bytes()
    doc = json.loads((out / "results.json").read_text())
    for name, edit in (("nodata", lambda d: d.pop("data")), ("noresults", lambda d: d.pop("results")),
                       ("nolatency", lambda d: d["results"][0].pop("latency_ms"))):
        d = json.loads(json.dumps(doc))
        edit(d)
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
        rc, _, err = run(["report", tmp_path / f"{name}.json", "--out", tmp_path / "rep"], capsys)
        assert rc == 2 and "malformed evaluation results file" in err and f"{name}.json" in err
    assert not (tmp_path / "rep").exists()


def test_M9_ranges_json_with_bad_num_images(w, tmp_path, capsys):
    p = tmp_path / "r.json"
    p.write_text('{"format": "trtquant-ranges/1", "tensors": [], "num_images": "x"}')
    rc, _, err = run(["cache", "show", p], capsys)
    assert rc == 2 and "num_images" in err and "'x'" in err


def test_L1_lint_names_the_positional_file(w, tmp_path, capsys):
    (tmp_path / "text.onnx").write_text("not a model")
    rc, _, err = run(["lint", tmp_path / "text.onnx"], capsys)
    assert rc == 2 and "--onnx" not in err and str(tmp_path / "text.onnx") in err


def test_L3_cache_diff_show_convert_report_what_is_in_the_file(w, tmp_path, capsys):
    base = read_trt_cache(w / "base.bin")
    other = TrtCache(999999, base.algorithm, dict(base.scales))
    (tmp_path / "c1.bin").write_text(other.to_text())
    rc, out, _ = run(["cache", "diff", w / "base.bin", tmp_path / "c1.bin"], capsys)
    assert rc == 1 and "header   TRT-8601-EntropyCalibration2 -> TRT-999999-EntropyCalibration2" in out
    zero = dict(base.scales)
    zero[next(iter(zero))] = 0.0
    (tmp_path / "z.bin").write_text(TrtCache(8601, base.algorithm, zero).to_text())
    rc, out, _ = run(["cache", "show", tmp_path / "z.bin"], capsys)
    assert rc == 0 and f"{len(zero)} tensors (1 with scale 0)" in out and "scale 0: an all-zero tensor" in out
    rc, out, _ = run(["cache", "diff", w / "base.bin", tmp_path / "z.bin"], capsys)
    assert rc == 1 and "0 missing in b" in out and "zero" in out
    rc, out, _ = run(["cache", "show", w / "base.bin", tmp_path / "c1.bin"], capsys)
    assert rc == 0 and str(tmp_path / "c1.bin") in out and "TRT-999999" in out
    rc, _, err = run(["cache", "convert", w / "base.bin", "--out", tmp_path / "x.json", "--trt-version", "10.3.0"],
                     capsys)
    assert rc == 2 and "--trt-version has no effect" in err and not (tmp_path / "x.json").exists()
    (tmp_path / "empty.bin").write_bytes(b"")
    rc, _, err = run(["cache", "show", tmp_path / "empty.bin"], capsys)
    assert rc == 2 and "empty" in err
    (tmp_path / "bom.bin").write_bytes(b"\xef\xbb\xbf" + (w / "base.bin").read_bytes())
    rc, out, _ = run(["cache", "show", tmp_path / "bom.bin"], capsys)
    assert rc == 0 and "TRT-8601-EntropyCalibration2" in out


def test_L5_no_header_warning_when_nothing_is_written(tmp_path, capsys):
    rc, _, err = run(["calibrate", "--model", "mobilenetv2", "--cache", tmp_path / "c.bin"], capsys)
    assert rc == 2 and "TensorRT is not installed" not in err


def test_L7_unnormalised_float_pixels_warn(w, tmp_path, capsys, caplog):
    tiny_model(tmp_path / "m.onnx")
    rc, _, _ = run(["calibrate", "--onnx", tmp_path / "m.onnx", *T, "--data", w / "raw255.npy", "--cache",
                    tmp_path / "c.bin"], capsys)
    assert rc == 0 and "un-normalised 0..255 pixels" in caplog.text


def test_L8_lint_of_a_model_without_qdq_says_nothing_was_checked(w, capsys):
    rc, out, _ = run(["lint", w / "tiny.onnx"], capsys)
    assert rc == 0 and "no Q/DQ nodes: nothing was checked" in out


def test_L10_text_files_are_not_called_pickles(w, tmp_path, capsys):
    rc, _, err = run(["calibrate", *tiny(w), "--data", w / "text.npy", "--cache", tmp_path / "c.bin"], capsys)
    assert rc == 2 and "not a .npy file" in err and "pickle" not in err
    (tmp_path / "t.npz").write_text("text")
    rc, _, err = run(["calibrate", "--from-stats", tmp_path / "t.npz", "--cache", tmp_path / "c.bin"], capsys)
    assert rc == 2 and "not a statistics file" in err and "pickle" not in err


def test_L9_help_is_complete(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    assert set(sub.choices) == {"calibrate", "build", "cache", "lint", "evaluate", "report", "sweep", "debug"}
    for name, p in sub.choices.items():
        assert p.description, name
        for action in p._actions:
            assert action.help, (name, action.dest)
        text = p.format_help()
        assert "(default: None)" not in text and text.count("(default:") == len(set(
            l for l in text.split("(default:")[1:])), name
        for line in text.split("(default:")[1:]:
            assert "(default:" not in line
    helptext = " ".join(sub.choices["evaluate"].format_help().split())
    assert "0.5%" in helptext and "percentage points" in helptext and "sqnr:30dB" in helptext
    assert "1 diff found differences" in sub.choices["cache"].format_help()
    assert "1 errors found" in sub.choices["lint"].format_help()
    calib = " ".join(sub.choices["calibrate"].format_help().split())
    assert "at most 1000) (default" not in calib and "CACHE.ranges.json) (default" not in calib


# ------------------------------------------------------------------------------------------------
# issue 11: cases of the review that the earlier pass left open, or had no test
# ------------------------------------------------------------------------------------------------

def test_M11_relative_cache_dir_that_is_a_file_names_the_variable(w, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(w)
    monkeypatch.setenv("TRTQUANT_CACHE_DIR", "./photo.jpg")          # the review's exact form
    before = snapshot(w)
    rc, _, err = run(["calibrate", "--num-images", "4", *T, "--cache", tmp_path / "x2.bin"], capsys)
    assert rc == 2 and "photo.jpg" in err and "$TRTQUANT_CACHE_DIR must name a writable directory" in err
    assert "Traceback" not in err and snapshot(w) == before and list(tmp_path.iterdir()) == []


def test_M15_build_takes_its_own_qdq_model_and_its_json_as_ranges(w, tmp_path, capsys):
    B = ["build", "--onnx", w / "tiny.onnx", "--precision", "int8"]
    assert run([*B, "--ranges", w / "base.bin", "--out", tmp_path / "eng"], capsys)[0] == 0
    rc, _, err = run([*B, "--ranges", tmp_path / "eng" / "model_qdq.onnx", "--out", tmp_path / "bx6"], capsys)
    assert rc == 0, err
    assert (tmp_path / "bx6" / "engine.json").is_file()
    assert run(["cache", "convert", tmp_path / "eng" / "model_qdq.onnx", "--out", tmp_path / "q.json"], capsys)[0] == 0
    rc, _, err = run([*B, "--ranges", tmp_path / "q.json", "--out", tmp_path / "bx7"], capsys)
    assert rc == 0, err


def test_L1_cache_convert_names_its_input_file_not_ranges(w, tmp_path, capsys):
    # tiny's cache converted against the default model (no --onnx): the file and --onnx are named, not --ranges
    rc, _, err = run(["cache", "convert", w / "base.bin", "--out", tmp_path / "x.onnx"], capsys)
    assert rc == 2 and "ranges do not match" in err and f"| {w / 'base.bin'}:" in err
    assert "--ranges" not in err and "--onnx MODEL.onnx" in err
    assert list(tmp_path.iterdir()) == []


def test_L1_build_and_sweep_name_precision_and_ranges(w, tmp_path, capsys):
    B = ["build", "--onnx", w / "tiny.onnx", "--out", tmp_path / "b"]
    rc, _, err = run([*B, "--precision", "int4"], capsys)
    assert rc == 2 and "unknown precision | --precision int4" in err and "fp32 | fp16 | int8 | PLAN.json" in err
    rc, _, err = run([*B, "--precision", "INT8"], capsys)
    assert rc == 2 and "--precision INT8" in err and "lower-case: --precision int8" in err
    rc, _, err = run([*B, "--precision", "int8", "--ranges", tmp_path / "nope.bin"], capsys)
    assert rc == 2 and f"file not found | --ranges {tmp_path / 'nope.bin'}" in err
    rc, _, err = run(["sweep", *tiny(w), "--ranges", tmp_path / "nope.bin", "--out", tmp_path / "s"], capsys)
    assert rc == 2 and f"file not found | --ranges {tmp_path / 'nope.bin'}" in err
    assert list(tmp_path.iterdir()) == []


def test_L1_sweep_input_shape_hint_names_no_flag_sweep_lacks(w, tmp_path, capsys):
    tiny_model(tmp_path / "small32.onnx", size=32)
    rc, _, err = run(["sweep", "--onnx", tmp_path / "small32.onnx", "--data", w / "raw255.npy", *T,   # 224x224 floats
                      "--out", tmp_path / "s"], capsys)
    assert rc == 2 and "input shape mismatch" in err and "--preset" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small32.onnx"]


def test_L1_build_torch_backend_unsupported_op_hint_names_backend(w, tmp_path, capsys):
    import onnx
    from onnx import helper

    m = onnx.load(str(w / "tiny.onnx"))
    gap = next(n for n in m.graph.node if n.op_type == "GlobalAveragePool")
    gap.input[0] = "lrn_out"
    m.graph.node.insert(2, helper.make_node("LRN", ["relu_out"], ["lrn_out"], size=3, name="lrn"))
    onnx.save(m, str(tmp_path / "lrn.onnx"))
    rc, _, err = run(["build", "--onnx", tmp_path / "lrn.onnx", "--precision", "fp32", "--backend", "torch",
                      "--out", tmp_path / "b"], capsys)
    assert rc == 2 and "not supported by the PyTorch executor" in err and "LRN" in err
    assert "--executor" not in err and "--backend onnxruntime" in err
    assert not (tmp_path / "b").exists()


def test_L1_corrupt_cached_export_is_exported_again(tmp_path, capsys, monkeypatch, caplog):
    from trtquant.quant.graph import models

    real = models.resolve_model("mobilenet_v2")             # the export in the default cache
    monkeypatch.setenv("TRTQUANT_CACHE_DIR", str(tmp_path / "tc"))
    (tmp_path / "tc" / "onnx").mkdir(parents=True)
    bad = tmp_path / "tc" / "onnx" / real.onnx_path.name
    bad.write_bytes(real.onnx_path.read_bytes()[:1000])      # a truncated copy
    monkeypatch.setattr(models, "export_onnx", lambda module, size=224: real.onnx_path.read_bytes())
    rc, out, err = run(["calibrate", "--num-images", "2", "--no-progress", "--cache", tmp_path / "c.bin"], capsys)
    assert rc == 0, err
    assert "--onnx" not in caplog.text and "is unreadable" in caplog.text and "exporting mobilenet_v2 again" in caplog.text
    assert bad.read_bytes() == real.onnx_path.read_bytes()


def test_L3_convert_says_what_it_does_with_a_zero_scale(w, tmp_path, capsys):
    base = read_trt_cache(w / "base.bin")
    zero = dict(base.scales)
    first = next(iter(zero))
    zero[first] = 0.0
    (tmp_path / "z.bin").write_text(TrtCache(8601, base.algorithm, zero).to_text())
    rc, out, _ = run(["cache", "convert", tmp_path / "z.bin", "--out", tmp_path / "z.json"], capsys)
    assert rc == 0 and "left out" not in out and f"given the placeholder amax 1: {first}" in out
    assert read_ranges_json(tmp_path / "z.json").ranges[first].amax == 1.0


def test_H8_interrupt_before_any_config_finished_claims_no_partial_file(w, tmp_path, capsys, monkeypatch):
    out, base, before = _complete_evaluation(w, tmp_path, capsys)
    from trtquant.quant.engines import registry as backends

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(backends, "build", interrupted)
    rc, _, err = run([*base, "--configs", "fp32,int8:entropy,int8:minmax"], capsys)
    assert rc == 2 and "left untouched" in err and "no configuration had finished" in err
    assert "results.partial.json" not in err and snapshot(out) == before


def test_M3_failing_smoke_check_is_exit_2_and_writes_nothing(w, tmp_path, capsys, monkeypatch):
    from trtquant.quant import build as build_mod

    real = build_mod.build

    def engine_that_fails(*a, **kw):
        engine = real(*a, **kw)

        def run(x):
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions")

        engine.run = run
        return engine

    monkeypatch.setattr(build_mod, "build", engine_that_fails)
    for out in (tmp_path / "bs1", tmp_path / "existing"):
        if out.name == "existing":
            # an earlier build's set in --out (no smoke check: the engine is not run)
            assert run(["build", "--onnx", w / "tiny.onnx", "--precision", "fp32", "--no-smoke", "--out", out],
                       capsys)[0] == 0
        before = snapshot(out) if out.exists() else None
        rc, _, err = run(["build", "--onnx", w / "tiny.onnx", "--precision", "int8", "--ranges", w / "base.bin",
                          "--out", out], capsys)
        assert rc == 2 and "smoke check cannot run the built engine" in err and "INVALID_ARGUMENT" in err
        assert "--no-smoke" in err and "Traceback" not in err
        assert (snapshot(out) == before) if before is not None else not out.exists()
    monkeypatch.setattr(build_mod, "build", real)
    rc, out, err = run(["build", "--onnx", w / "tiny.onnx", "--precision", "int8", "--ranges", w / "base.bin",
                        "--out", tmp_path / "ok"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["engine.json", "model_qdq.onnx", "plan.json"]


def test_M13_sweep_writes_its_set_together_after_validation(w, tmp_path, capsys, monkeypatch):
    out = tmp_path / "sw"
    args = ["sweep", *tiny(w), "--data", w / "u8.npz", "--calib-images", "4", "--proxy-images", "2", "--out", out]
    assert run(args, capsys)[0] == 0
    before = snapshot(out)
    assert set(before) == {"plan.json", "model_qdq.onnx", "calib.bin", "sweep.json", "sweep.md", "sweep.html"}
    from trtquant.quant.engines import registry as backends

    def interrupted(*a, **kw):                  # Ctrl-C while the real engine validates the plan
        raise KeyboardInterrupt

    monkeypatch.setattr(backends, "build", interrupted)
    rc, _, err = run([*args, "--trt-version", "10.3.0"], capsys)
    assert rc == 2 and "interrupted" in err
    assert snapshot(out) == before              # no file of the new set replaced the earlier one, no temporary
    monkeypatch.undo()
    assert run([*args, "--trt-version", "10.3.0"], capsys)[0] == 0
    assert (out / "calib.bin").read_text().startswith("TRT-100300-")


def test_L8_lint_prints_plain_numbers(w, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    assert run(["build", "--onnx", w / "tiny.onnx", "--precision", "int8", "--ranges", w / "base.bin", "--no-smoke",
                "--out", tmp_path / "eng"], capsys)[0] == 0
    m = onnx.load(str(tmp_path / "eng" / "model_qdq.onnx"))
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
    init = next(i for i in m.graph.initializer if i.name == q.input[1])
    init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    onnx.save(m, str(tmp_path / "zero.onnx"))
    rc, out, _ = run(["lint", tmp_path / "zero.onnx"], capsys)
    assert rc == 1 and "got min 0.0" in out and "np.float32" not in out


@pytest.mark.parametrize("verb", ["evaluate", "build", "sweep"])
def test_L4_M20_a_backend_that_is_not_installed_is_refused_before_any_work(w, tmp_path, capsys, monkeypatch, verb):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)           # TensorRT absent (also where it is installed)
    flag = "--validate-backend" if verb == "sweep" else "--backend"
    extra = ["--precision", "fp32"] if verb == "build" else ["--num-images", "4", *T]
    rc, _, err = run([verb, "--onnx", w / "tiny.onnx", *extra, flag, "tensorrt", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and f"TensorRT is not installed | {flag} tensorrt" in err and "trtexec" in err
    assert list(tmp_path.iterdir()) == []
