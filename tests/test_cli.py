"""The `kvcore` command runs and reports what it claims (`kvcore eval` and `kvcore bench`:
tests/test_eval_cli.py)."""
import json

from kvcore import cli


def test_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu"] is True and "torch_runtime" in info
