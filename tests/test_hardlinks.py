"""Identical files across backend environments are stored once, and only identical ones."""
import os
import shutil

from evaluator.hardlinks import MIN_BYTES, share_identical


def _write(path, data, mode=0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def test_only_byte_identical_files_become_one_and_removing_an_environment_keeps_the_other(tmp_path):
    big = os.urandom(MIN_BYTES + 1)
    a, b = tmp_path / "a", tmp_path / "b"
    lib = "lib/python3.11/site-packages/torch/lib"
    _write(a / lib / "libtorch.so", big)
    _write(b / lib / "libtorch.so", big)
    _write(a / lib / "differs.so", big)
    _write(b / lib / "differs.so", big[:-1] + bytes([big[-1] ^ 1]))
    _write(a / lib / "mode.so", big)
    _write(b / lib / "mode.so", big, 0o755)
    _write(a / "small.py", b"x = 1\n")
    _write(b / "small.py", b"x = 1\n")
    _write(b / "moved" / "libtorch.so", big)  # same bytes at another path: not the same file

    saved = share_identical(b, [a, b])

    assert saved == len(big)
    assert os.path.samefile(a / lib / "libtorch.so", b / lib / "libtorch.so")
    for name in ("differs.so", "mode.so"):
        assert not os.path.samefile(a / lib / name, b / lib / name), name
    assert not os.path.samefile(a / "small.py", b / "small.py")
    assert not os.path.samefile(b / lib / "libtorch.so", b / "moved" / "libtorch.so")
    assert share_identical(b, [a]) == 0, "a second pass finds nothing more"
    shutil.rmtree(a)
    assert (b / lib / "libtorch.so").read_bytes() == big
    assert not list(tmp_path.rglob("*.deploy-eval-link"))
