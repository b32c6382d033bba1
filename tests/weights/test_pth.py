"""The restricted ``.pth`` reader against checkpoints written by torch (in a subprocess)."""

import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

from tfrcnn.weights.pth import PthError, find_state_dict, load_pth, load_state_dict

# Written by torch in a subprocess: the checkpoint and, for each tensor, its values as .npy.
WRITER = textwrap.dedent(r"""
    import collections, os, sys
    import numpy as np
    import torch

    out, legacy = sys.argv[1], sys.argv[2] == "1"
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    conv = torch.nn.Conv2d(3, 4, 3)
    bn = torch.nn.BatchNorm2d(4)
    bn.running_mean.normal_(generator=g)
    state = collections.OrderedDict()
    state["conv.weight"] = conv.weight            # a Parameter
    state["conv.bias"] = conv.bias
    state["bn.running_var"] = bn.running_var
    state["bn.num_batches_tracked"] = torch.tensor(7)   # 0-d int64
    state["f64"] = torch.randn(3, 2, generator=g, dtype=torch.float64)
    state["f16"] = torch.randn(4, generator=g).half()
    state["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
    state["i32"] = torch.arange(-5, 5, dtype=torch.int32)
    state["i16"] = torch.arange(-3, 3, dtype=torch.int16)
    state["i8"] = torch.arange(-4, 4, dtype=torch.int8)
    state["u8"] = torch.arange(250, 256, dtype=torch.uint8)
    state["bool"] = torch.tensor([True, False, True])
    state["c64"] = torch.randn(3, generator=g, dtype=torch.complex64)
    state["empty"] = torch.zeros(0, 4)
    state["transposed"] = base.t()                 # strided view
    state["offset_slice"] = base[2:, 1::2]         # offset + step, shares base's storage
    state["row"] = base[3]                         # offset view of the same storage
    state["base"] = base
    state["expanded"] = torch.arange(3.0).expand(4, 3)  # stride 0
    nested = {"model": state, "epoch": 3, "optimizer": {"lr": 0.02, "param_groups": [{"momentum": 0.9}]}}
    torch.save(nested, os.path.join(out, "ckpt.pth"), _use_new_zipfile_serialization=not legacy)
    for key, value in state.items():
        value = value.detach()
        if value.dtype == torch.bfloat16:
            value = value.float()
        np.save(os.path.join(out, key + ".npy"), value.numpy())
""")


def _torch(code, *args):
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reads_torch_checkpoints_exactly(tmp_path, legacy):
    _torch(WRITER, tmp_path, int(legacy))
    path = tmp_path / "ckpt.pth"
    assert zipfile.is_zipfile(path) is not legacy
    loaded = load_pth(path)
    assert loaded["epoch"] == 3
    assert loaded["optimizer"] == {"lr": 0.02, "param_groups": [{"momentum": 0.9}]}
    state = load_state_dict(path)
    assert list(state) == list(loaded["model"])
    for key, value in state.items():
        expected = np.load(tmp_path / f"{key}.npy")
        assert value.dtype == expected.dtype, key
        assert value.shape == expected.shape, key
        np.testing.assert_array_equal(value, expected, err_msg=key)
        assert value.flags.c_contiguous and value.flags.writeable, key
    assert state["bn.num_batches_tracked"].shape == () and state["bn.num_batches_tracked"] == 7
    np.testing.assert_array_equal(state["row"], state["base"][3])
    np.testing.assert_array_equal(state["offset_slice"], state["base"][2:, 1::2])
    state["base"][0, 0] = 123.0  # views are copies: writing one leaves the others alone
    assert state["transposed"][0, 0] != 123.0


def test_state_dict_lookup(tmp_path):
    arrays = {"a": np.zeros(2, np.float32)}
    assert list(find_state_dict({"state_dict": arrays})) == ["a"]
    assert list(find_state_dict({"module.a": arrays["a"], "module.b": arrays["a"]})) == ["a", "b"]
    with pytest.raises(PthError, match="no state dict found"):
        find_state_dict({"epoch": 3}, "x.pth")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_checkpoint(path, payload):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")


def test_code_running_pickles_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": {"w": _Exploit(marker)}}, protocol=2)
    _zip_checkpoint(tmp_path / "zip.pth", payload)
    with pytest.raises(PthError) as error:
        load_pth(tmp_path / "zip.pth")
    message = str(error.value)
    assert "\n" not in message
    assert "posix.system" in message or "os.system" in message
    assert "refused" in message
    # the legacy stream: the exploit in the magic-number pickle itself
    (tmp_path / "legacy.pth").write_bytes(payload)
    with pytest.raises(PthError, match="system"):
        load_pth(tmp_path / "legacy.pth")
    # builtins.eval through STACK_GLOBAL (protocol 4)
    evil = pickle.dumps(_Eval(f"open('{marker}', 'w')"), protocol=4)
    _zip_checkpoint(tmp_path / "eval.pth", evil)
    with pytest.raises(PthError, match="'builtins.eval'"):
        load_pth(tmp_path / "eval.pth")
    assert not marker.exists()


class _Eval:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


def test_torch_saved_non_tensor_objects_are_refused(tmp_path):
    _torch(
        textwrap.dedent("""
        import argparse, sys, torch
        torch.save({"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, sys.argv[1])
    """),
        tmp_path / "ns.pth",
    )
    with pytest.raises(PthError, match=r"'argparse\.Namespace'.*refused"):
        load_pth(tmp_path / "ns.pth")


def test_bad_files_one_line(tmp_path):
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(PthError, match="not a torch checkpoint"):
        load_pth(tmp_path / "text.pth")
    with pytest.raises(PthError, match="no such checkpoint"):
        load_pth(tmp_path / "missing.pth")
    _torch(
        "import sys, torch; torch.save({'w': torch.arange(100.0)}, sys.argv[1], "
        "_use_new_zipfile_serialization=False)",
        tmp_path / "full.pth",
    )
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:-40])
    with pytest.raises(PthError, match="truncated") as error:
        load_pth(tmp_path / "cut.pth")
    assert "\n" not in str(error.value)
