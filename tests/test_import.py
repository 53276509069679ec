"""Importing nerfhead must be cheap: it never compiles nor loads the CUDA extension."""

import subprocess
import sys


def test_import_does_not_load_extension():
    code = ("import sys, nerfhead, nerfhead.ops, nerfhead.ops.hashgrid, nerfhead.ops.raymarch, "
            "nerfhead.cli; assert 'nerfhead._C' not in sys.modules, sorted(sys.modules); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_import_nerfhead_does_not_import_torch():
    code = "import sys, nerfhead; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "nerfhead", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in ("info", "preprocess", "train", "render", "evaluate", "run", "bench"):
        assert name in out.stdout


def test_info_reports_backends_and_reasons():
    out = subprocess.run([sys.executable, "-m", "nerfhead", "info", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import json

    info = json.loads(out.stdout)
    assert info["backends"]["hashgrid"]["torch"] == ""
    # every unavailable backend carries a reason, never an empty shrug
    for fam in info["backends"].values():
        for name, why in fam.items():
            assert name == "torch" or isinstance(why, str)
