"""Download on demand: a server on 127.0.0.1 serving files the test makes (no internet used)."""

import contextlib
import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest

from tfrcnn.weights import registry
from tfrcnn.weights.download import (
    DownloadError,
    fetch,
    hash_from_file_name,
    hash_matches,
)


@contextlib.contextmanager
def serve(folder):
    """An HTTP server on 127.0.0.1 serving ``folder``; yields (base URL, list of requested paths)."""
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv("TFRCNN_WEIGHTS_BASE_URL", raising=False)
    return home / "models"


def _published(folder, stem, data):
    """Write ``data`` as torchvision names it: STEM-<first 8 hex digits of its SHA-256>.pth."""
    name = f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (folder / name).write_bytes(data)
    return name


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_verify_and_cache(tmp_path, keras_home, capsys):
    served = tmp_path / "served"
    served.mkdir()
    data = os.urandom(3 << 20)  # 3 MB: several chunks, a progress bar
    name = _published(served, "resnet50", data)
    assert hash_from_file_name(name) == hashlib.sha256(data).hexdigest()[:8]
    with serve(served) as (base, requests):
        path = fetch("https://download.pytorch.org/models/" + name, base_url=base)
        assert path == str(keras_home / name)
        assert open(path, "rb").read() == data
        assert requests == ["/" + name]
        assert name in capsys.readouterr().err  # the progress bar names the file
        # cached: the second call makes no request
        assert fetch("https://download.pytorch.org/models/" + name, base_url=base) == path
        assert requests == ["/" + name]
    assert _leftovers(keras_home) == [name]


def test_base_url_from_environment_and_full_hashes(tmp_path, keras_home, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    data = b"weights" * 1000
    (served / "w.h5").write_bytes(data)
    with serve(served) as (base, requests):
        monkeypatch.setenv("TFRCNN_WEIGHTS_BASE_URL", base)
        md5 = hashlib.md5(data).hexdigest()
        path = fetch("https://storage.googleapis.com/x/w.h5", file_hash=md5, progress=False)
        assert requests == ["/w.h5"] and open(path, "rb").read() == data
    assert hash_matches(path, hashlib.sha256(data).hexdigest())
    assert hash_matches(path, md5)
    assert not hash_matches(path, "0" * 64)


def test_wrong_hash_is_not_kept(tmp_path, keras_home):
    served = tmp_path / "served"
    served.mkdir()
    (served / "resnet50-00000000.pth").write_bytes(b"not the published file")
    with serve(served) as (base, _):
        with pytest.raises(DownloadError) as error:
            fetch(
                "https://download.pytorch.org/models/resnet50-00000000.pth",
                base_url=base,
                progress=False,
            )
    message = str(error.value)
    assert "\n" not in message and "expected 00000000" in message and "nothing was kept" in message
    assert _leftovers(keras_home) == []  # no file, no temporary sibling


def test_http_error_one_line(tmp_path, keras_home):
    (tmp_path / "served").mkdir()
    with serve(tmp_path / "served") as (base, _):
        with pytest.raises(DownloadError, match="HTTP 404") as error:
            fetch("https://example.org/missing-12345678.pth", base_url=base, progress=False)
    assert "\n" not in str(error.value)
    assert _leftovers(keras_home) == []


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_message(keras_home):
    base = f"http://127.0.0.1:{_closed_port()}/"
    file_name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with pytest.raises(DownloadError) as error:
        registry.fetch_keras_imagenet((file_name,), base_url=base, progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"no network: download {base}{file_name} on a machine with internet "
        f"and copy it to {keras_home / file_name}, or pass "
        f"backbone_weights=PATH"
    )
    assert _leftovers(keras_home) == []


def test_keras_imagenet_file_md5_and_cache(tmp_path, keras_home, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    file_name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    data = b"fake h5 bytes"
    (served / file_name).write_bytes(data)
    # the registry's MD5 is Keras'; the served file is the test's, so check against its own MD5
    url, _ = registry.KERAS_APPLICATIONS[file_name]
    monkeypatch.setitem(
        registry.KERAS_APPLICATIONS, file_name, (url, hashlib.md5(data).hexdigest())
    )
    with serve(served) as (base, requests):
        path = registry.fetch_keras_imagenet((file_name,), base_url=base, progress=False)
        assert registry.fetch_keras_imagenet((file_name,), base_url=base) == path
        assert requests == ["/" + file_name]
    # with Keras' own MD5 the test's file is rejected and not kept
    monkeypatch.setitem(
        registry.KERAS_APPLICATIONS, file_name, (url, "4d473c1dd8becc155b73f8504c6f6626")
    )
    os.remove(path)
    with serve(served) as (base, _):
        with pytest.raises(DownloadError, match="expected 4d473c1d"):
            registry.fetch_keras_imagenet((file_name,), base_url=base, progress=False)
    assert _leftovers(keras_home) == []


def test_registry_names_and_coco_rows():
    assert registry.published("torchvision:fasterrcnn_resnet50_fpn_coco").file_name == (
        "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    )
    with pytest.raises(ValueError, match="unknown published torchvision weights 'nope'"):
        registry.published("nope")
    assert len(registry.COCO_TORCHVISION_CATEGORIES) == 91
    assert registry.COCO_UNUSED_IDS == (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
    assert len(registry.COCO_NAMES) == 80 and registry.COCO_NAMES[:2] == ("person", "bicycle")
    assert registry.COCO_NAMES[-1] == "toothbrush" and registry.COCO_TORCHVISION_ROWS[-1] == 90
    # COCO category id of "stop sign" is 13 (id 12 is unused)
    assert registry.COCO_TORCHVISION_ROWS[registry.COCO_NAMES.index("stop sign")] == 13
    rows, names = registry.coco_class_rows("keep")
    assert rows == tuple(range(1, 91)) and names[11] == "N/A"


def test_registry_matches_torchvision():
    """The addresses and the 91 categories are torchvision's own (read in a subprocess)."""
    import json
    import subprocess
    import sys

    code = (
        "import json; from torchvision.models import detection as d, resnet50, mobilenet_v3_large;"
        "from torchvision.models import ResNet50_Weights as R, MobileNet_V3_Large_Weights as M;"
        "w = d.FasterRCNN_ResNet50_FPN_Weights.COCO_V1;"
        "print(json.dumps({'cats': w.meta['categories'], 'urls': {"
        "'fasterrcnn_resnet50_fpn_coco': w.url,"
        "'fasterrcnn_resnet50_fpn_v2_coco': d.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url,"
        "'fasterrcnn_mobilenet_v3_large_fpn_coco': "
        "d.FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1.url,"
        "'fasterrcnn_mobilenet_v3_large_320_fpn_coco': "
        "d.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1.url,"
        "'resnet50': R.IMAGENET1K_V1.url, 'mobilenet_v3_large': M.IMAGENET1K_V1.url}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert tuple(facts["cats"]) == registry.COCO_TORCHVISION_CATEGORIES
    assert facts["urls"] == {name: entry.url for name, entry in registry.TORCHVISION.items()}


def test_imagenet_backbone_weights_download_on_demand(tmp_path, keras_home, monkeypatch):
    """backbone_weights="imagenet" absent from the cache: fetched from the (test) server into the
    cache, hash-checked, then loaded by layer name."""
    import keras
    import numpy as np

    from tfrcnn.backbones import build_backbone

    served = tmp_path / "served"
    served.mkdir()
    file_name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    reference = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    reference.save(str(served / file_name))  # the legacy HDF5 layout of the published file
    md5 = hashlib.md5((served / file_name).read_bytes()).hexdigest()
    url, _ = registry.KERAS_APPLICATIONS[file_name]
    monkeypatch.setitem(registry.KERAS_APPLICATIONS, file_name, (url, md5))
    with serve(served) as (base, requests):
        monkeypatch.setenv("TFRCNN_WEIGHTS_BASE_URL", base)
        model, _ = build_backbone("vgg16", weights="imagenet")
        assert requests == ["/" + file_name]
        assert (keras_home / file_name).is_file()
        build_backbone("vgg16", weights="imagenet")  # cached: no second request
        assert requests == ["/" + file_name]
    kernel = model.get_layer("block1_conv1").kernel.numpy()
    np.testing.assert_array_equal(kernel, reference.get_layer("block1_conv1").kernel.numpy())
