"""What every ``tfrcnn`` command shares: the one-line user error, TensorFlow's log level,
``--set`` / ``--config`` parsing and YAML output.

Nothing here imports TensorFlow.
"""

import difflib
import json
import os

# TensorFlow's C++ log level when the user has not chosen one: 2 hides its INFO and WARNING
# start-up lines (oneDNN, CPU features); ``--tf-log`` shows everything.
QUIET_TF_LOG_LEVEL = "2"
TF_LOG_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"

# Whether this process chose the quiet level (then TensorFlow's import is also kept off stderr).
_quiet = {"chosen": False}


class UserError(Exception):
    """A mistake in the command line or its files: reported in one line, exit status 2."""


def one_line(message):
    """``message`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(str(message).split())


def quiet_tensorflow_log(tf_log=False, environ=None):
    """Quiet TensorFlow's C++ logging before TensorFlow is imported: ``TF_CPP_MIN_LOG_LEVEL=2``
    unless the user set the variable; ``tf_log=True`` sets it to 0 (every line).

    Returns True when the CLI chose the quiet level (the user asked for nothing)."""
    environ = os.environ if environ is None else environ
    environ.setdefault("KERAS_BACKEND", "tensorflow")
    if tf_log:
        environ[TF_LOG_VARIABLE] = "0"
        return False
    if TF_LOG_VARIABLE in environ:
        return False
    environ[TF_LOG_VARIABLE] = QUIET_TF_LOG_LEVEL
    if environ is os.environ:
        _quiet["chosen"] = True
    return True


def import_tensorflow_quietly(quiet=None):
    """Import TensorFlow and start its devices with the process's standard error (file descriptor
    2) sent to a temporary file, when ``quiet`` (default: when :func:`quiet_tensorflow_log` chose
    the quiet level): TensorFlow's C++ code prints some start-up lines (CUDA driver probes,
    ``cuInit`` on a machine without a GPU) before its log level applies. If the import fails, the
    captured text is written back to standard error before the exception propagates. Commands
    call this once their arguments are checked, before anything that imports TensorFlow."""
    import sys
    import tempfile

    quiet = _quiet["chosen"] if quiet is None else quiet
    if not quiet or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def closest(name, known):
    """``"did you mean 'x'?"`` for the closest of ``known`` to ``name``, else the list of them."""
    match = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return (
        f"did you mean {match[0]!r}?" if match else f"known: {', '.join(sorted(map(str, known)))}"
    )


def _parse_value(text):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs):
    """``["epochs=3", "model.head_units=[128,128]"]`` -> ``{"epochs": 3, "model": {...}}``.

    Values are read as JSON when they parse (numbers, lists, ``true``, ``null``), else as text.
    """
    overrides = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"bad --set {pair!r}: expected key=value, e.g. --set epochs=3")
        key, value = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"bad --set {pair!r}: empty key; use e.g. --set epochs=3")
        if key.startswith("model."):
            name = key[len("model.") :]
            if not name:
                raise UserError(f"bad --set {pair!r}: no model setting after 'model.'")
            overrides.setdefault("model", {})[name] = _parse_value(value)
        else:
            overrides[key] = _parse_value(value)
    return overrides


def load_config_file(path):
    """The settings mapping of a YAML (``.yaml`` / ``.yml``) or JSON run configuration file."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UserError(
                f"config file {path} is not valid YAML{where}; fix its syntax"
            ) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(
                f"config file {path} is not valid JSON (line {e.lineno}: {e.msg}); "
                "use a .yaml/.yml name for YAML"
            ) from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of settings, e.g. 'epochs: 3'")
    return data


def merge(base, extra):
    """``base`` updated with ``extra``; the ``model`` mapping merges key by key."""
    out = dict(base)
    for key, value in extra.items():
        if key == "model" and isinstance(value, dict):
            out["model"] = {**out.get("model", {}), **value}
        else:
            out[key] = value
    return out


def to_yaml(value):
    """``value`` (JSON-like: tuples become lists) as block-style YAML, keys in their order."""
    import yaml

    return yaml.safe_dump(
        json.loads(json.dumps(value, default=list)),
        sort_keys=False,
        default_flow_style=None,
        width=100,
    )
