"""The `kvcore` command runs and reports what it claims."""
import json

from kvcore import cli


def test_eval_prints_bytes_and_errors(capsys, tmp_path):
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--shape", "smollm2-135m", "--tokens", "512", "--quick", "--device", "cpu",
                     "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "KIVI 2-bit g64" in text and "whole cache" in text
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    # 2-bit, group 64, D=64: K+V codes 2*16 B + metadata 2*(2*2*64/64) B per token-head vs 2*128 B bf16
    assert abs(rows["KIVI 2-bit g64"]["ratio"] - 256 / 40) < 1e-6
    assert rows["KIVI 8-bit g64"]["k_err"] < rows["KIVI 4-bit g64"]["k_err"] < rows["KIVI 2-bit g64"]["k_err"] < 0.6


def test_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu"] is True and "torch_runtime" in info
