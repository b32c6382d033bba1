"""tfrcnn.accel.configure_process: the BFC host allocator and oneDNN chosen before TensorFlow
starts, the user's choice kept, and what the allocator buys (page faults of a repeated op), each
checked in a fresh interpreter: TensorFlow reads the settings once. And ``import tfrcnn`` changes
no environment variable and no TensorFlow setting."""

import json
import os
import subprocess
import sys

import pytest

from tfrcnn.accel import process as runtime

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs in a fresh interpreter: optionally one TensorFlow op before configure_process, then a
# 64 MiB op repeated, and prints the allocator, the environment and the page faults of the repeats.
PROBE = r"""
import json, logging, os, resource, sys
order = sys.argv[1]
if order == "tensorflow_first":
    import tensorflow as tf
    tf.zeros([1024]).numpy()
import tfrcnn.accel
tfrcnn.accel.configure_process()
import tensorflow as tf

records = []
handler = logging.Handler()
handler.emit = lambda record: records.append((record.name, record.levelname, record.getMessage()))
for name in ("probe", "tfrcnn"):
    logging.getLogger(name).addHandler(handler)
    logging.getLogger(name).setLevel(logging.INFO)
if "once" in sys.argv[2:]:  # checks with once=True: one record from the two
    for _ in range(2):
        tfrcnn.accel.check_cpu_allocator(logging.getLogger("tfrcnn"), once=True)
allocator = tfrcnn.accel.check_cpu_allocator(logging.getLogger("probe"))

step = tf.function(lambda x: tf.reduce_sum(x * 2.0 + 1.0))
x = tf.ones([4096, 4096])
step(x).numpy()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    value = float(step(x).numpy())
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"allocator": allocator, "variable": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"),
                  "faults": faults, "value": value, "log": records}))
"""


def probe(order="tfrcnn_first", *flags, **env):
    """The probe's report. oneDNN's custom ops are off unless ``env`` says otherwise: with them on
    (TensorFlow's default on CPUs with AVX512-VNNI / BF16 / AMX) TensorFlow always uses its own
    pooled oneDNN allocator and the variable tfrcnn sets has no effect to observe."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in (runtime.BFC_VARIABLE, runtime.LIMIT_VARIABLE)
    }
    environ.update({"TF_ENABLE_ONEDNN_OPTS": "0", **env}, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, order, *flags],
        check=False,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_choose_sets_bfc_and_keeps_the_users_choice(monkeypatch):
    monkeypatch.setattr(runtime, "_physical_memory_mb", lambda: 24 * 1024)
    environ = {}
    assert runtime.choose_cpu_allocator(environ) is True
    assert environ == {"TF_CPU_ALLOCATOR_USE_BFC": "true"}  # TensorFlow's 64 GB cap is enough
    for choice in ("false", "0", "true"):
        environ = {"TF_CPU_ALLOCATOR_USE_BFC": choice}
        assert runtime.choose_cpu_allocator(environ) is False
        assert environ == {"TF_CPU_ALLOCATOR_USE_BFC": choice}


def test_choose_raises_the_pool_cap_to_the_machines_memory(monkeypatch):
    monkeypatch.setattr(runtime, "_physical_memory_mb", lambda: 256 * 1024)
    environ = {}
    runtime.choose_cpu_allocator(environ)
    assert environ == {"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPU_BFC_MEM_LIMIT_IN_MB": "262144"}
    environ = {"TF_CPU_BFC_MEM_LIMIT_IN_MB": "1000"}  # the user's cap stays
    runtime.choose_cpu_allocator(environ)
    assert environ["TF_CPU_BFC_MEM_LIMIT_IN_MB"] == "1000"


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False), ("", False)],
)
def test_bfc_requested_reads_the_variable_as_tensorflow_does(value, expected):
    assert runtime.bfc_requested({"TF_CPU_ALLOCATOR_USE_BFC": value}) is expected
    assert runtime.bfc_requested({}) is False


def test_configure_process_gives_the_bfc_allocator_and_no_page_faults_per_step():
    bfc = probe()
    system = probe(TF_CPU_ALLOCATOR_USE_BFC="false")
    assert bfc["allocator"] == "bfc" and bfc["variable"] == "true"
    assert system["allocator"] == "system" and system["variable"] == "false"
    assert bfc["value"] == system["value"] == 3.0 * 4096 * 4096
    # the 64 MiB intermediate is 16,384 pages: the system allocator maps it afresh every call
    assert system["faults"] >= 5 * 16384 * 0.9, system
    assert bfc["faults"] < 2000, bfc
    off = ", oneDNN operations: off"  # the probe pins TF_ENABLE_ONEDNN_OPTS=0
    assert bfc["log"] == [["probe", "INFO", "TensorFlow CPU allocator: bfc" + off]]
    assert system["log"] == [["probe", "INFO", "TensorFlow CPU allocator: system" + off]]


def test_tensorflow_started_first_is_reported_with_a_warning_once():
    late = probe("tensorflow_first", "once")
    assert late["allocator"] == "system" and late["variable"] == "true"
    [(name, level, message), (name2, level2, message2)] = late["log"]
    assert (name, level) == ("tfrcnn", "WARNING") and "configure_process()" in message
    assert (name2, level2, message2) == ("probe", "WARNING", message)  # two models, one warning


def test_onednn_pool_is_reported_as_bfc_whatever_the_variable():
    """With oneDNN's custom ops on, TensorFlow's CPU device allocates from its oneDNN pool (a BFC
    allocator) even when the variable asks for the system one: reported as "bfc", no faults."""
    pooled = probe(TF_ENABLE_ONEDNN_OPTS="1", TF_CPU_ALLOCATOR_USE_BFC="false")
    assert pooled["allocator"] == "bfc" and pooled["variable"] == "false"
    assert pooled["value"] == 3.0 * 4096 * 4096
    assert pooled["faults"] < 2000, pooled
    assert pooled["log"] == [
        ["probe", "INFO", "TensorFlow CPU allocator: bfc, oneDNN operations: on"]
    ]


def test_choose_onednn_on_x86_64_and_keeps_the_users_choice():
    environ = {}
    assert runtime.choose_onednn(environ, machine="x86_64", tensorflow_imported=False) is True
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}
    for choice in ("0", "1", "false"):
        environ = {"TF_ENABLE_ONEDNN_OPTS": choice}
        assert runtime.choose_onednn(environ, machine="x86_64", tensorflow_imported=False) is False
        assert environ == {"TF_ENABLE_ONEDNN_OPTS": choice}
    for machine in ("aarch64", "arm64", "ppc64le"):  # not measured there: TensorFlow's choice
        environ = {}
        assert runtime.choose_onednn(environ, machine=machine, tensorflow_imported=False) is False
        assert environ == {}
    # TensorFlow already imported: it has read the variable, setting it now would misstate it
    environ = {}
    assert runtime.choose_onednn(environ, machine="x86_64", tensorflow_imported=True) is False
    assert environ == {}


ONEDNN_PROBE = r"""
import json, os, sys
if sys.argv[1] == "tensorflow_first":
    import tensorflow
import tfrcnn.accel
tfrcnn.accel.configure_process()
print(json.dumps({"variable": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                  "enabled": tfrcnn.accel.onednn_enabled()}))
"""


def _onednn_probe(order, **env):
    environ = {k: v for k, v in os.environ.items() if k != runtime.ONEDNN_VARIABLE}
    environ.update(env, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-c", ONEDNN_PROBE, order],
        check=False,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_configure_process_turns_onednn_on_unless_the_user_or_tensorflow_came_first():
    if runtime.platform.machine().lower() in ("x86_64", "amd64"):
        assert _onednn_probe("tfrcnn_first") == {"variable": "1", "enabled": True}
    else:  # elsewhere TensorFlow's own choice stands
        assert _onednn_probe("tfrcnn_first")["variable"] is None
    assert _onednn_probe("tfrcnn_first", TF_ENABLE_ONEDNN_OPTS="0") == {
        "variable": "0",
        "enabled": False,
    }
    report = _onednn_probe("tensorflow_first")
    assert report["variable"] is None  # TensorFlow's own choice for this CPU stands
    assert report["enabled"] in (True, False)


# ``import tfrcnn`` (and the names below, which load the whole package) in a process that already
# imported TensorFlow and Keras: the environment and TensorFlow's threading and optimizer
# settings are those TensorFlow and Keras left.
NO_SIDE_EFFECTS_PROBE = r"""
import json, os
import tensorflow as tf, keras

def state():
    return {"environ": dict(os.environ),
            "intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads(),
            "optimizer": tf.config.optimizer.get_experimental_options(),
            "jit": tf.config.optimizer.get_jit(),
            "policy": keras.mixed_precision.global_policy().name}

before = state()
import tfrcnn
after_import = state()
tfrcnn.FasterRCNN, tfrcnn.accel, tfrcnn.export, tfrcnn.training  # load everything
after_use = state()
print(json.dumps({"import": after_import == before, "use": after_use == before,
                  "registered": "tfrcnn>FasterRCNN" in keras.saving.get_custom_objects()}))
"""

NO_TENSORFLOW_PROBE = r"""
import json, sys
import tfrcnn, tfrcnn.accel, tfrcnn.accel.process
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                  "public": sorted(tfrcnn.__all__)}))
"""


def _run(probe):
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=False,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_tfrcnn_changes_no_environment_variable_or_tensorflow_setting():
    assert _run(NO_SIDE_EFFECTS_PROBE) == {"import": True, "use": True, "registered": True}


def test_import_tfrcnn_and_its_process_configuration_import_no_tensorflow():
    report = _run(NO_TENSORFLOW_PROBE)
    assert report["tensorflow"] is False and report["keras"] is False
    assert {"FasterRCNN", "load_model", "accel", "layers", "ops", "weights"} <= set(
        report["public"]
    )


# Runs in a fresh interpreter: configure_process (or not), then eight threads that each hold a
# malloc'd block at the same time; prints glibc's count of arenas (malloc_info's <heap> entries).
ARENA_PROBE = r"""
import ctypes, os, re, sys, tempfile, threading
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "configure":
    from tfrcnn.accel import process
    print(process.configure_process()["malloc_arenas"])
else:
    print(None)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
barrier = threading.Barrier(8)
def work():
    block = libc.malloc(1 << 16)
    barrier.wait()
    libc.free(ctypes.c_void_p(block))
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile() as out:
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    print(len(re.findall(r"<heap nr=", open(out.name).read())))
"""


def test_configure_process_limits_glibc_to_two_malloc_arenas():
    """(glibc on Linux) Eight threads allocating at once get at most two arenas after
    configure_process; the user's MALLOC_ARENA_MAX is kept (configure_process leaves it alone)."""

    def arenas(mode, **env):
        environment = {k: v for k, v in os.environ.items() if k != runtime.ARENA_VARIABLE}
        environment.update(env)
        out = subprocess.run(
            [sys.executable, "-c", ARENA_PROBE, ROOT, mode],
            capture_output=True,
            text=True,
            env=environment,
            check=True,
        ).stdout.split()
        return out[0], int(out[1])

    set_by_tfrcnn, count = arenas("configure")
    assert set_by_tfrcnn == "True" and count <= 2
    set_by_user, count = arenas("configure", MALLOC_ARENA_MAX="4")
    assert set_by_user == "False" and count <= 4
    assert arenas("plain")[1] > 2  # glibc's default: an arena for each of the threads
