"""Start-up time of the ``tfrcnn`` command: ``--help`` of the command and of every subcommand,
each in a fresh Python process, and a user error that does import TensorFlow.

Prints the median and the fastest wall time of ``--repeat`` runs of each command line, and
checks that help prints nothing on standard error (no TensorFlow start-up line).

    python benchmarks/cli_startup.py --repeat 5
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = [
    ["--help"],
    ["train", "--help"],
    ["evaluate", "--help"],
    ["convert", "--help"],
    ["export", "--help"],
    ["predict", "--help"],
    ["presets"],
    ["train", "--data-path", "no_such_folder"],
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command line")
    args = parser.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    print(
        f"python {platform.python_version()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'command':45s} {'median s':>9s} {'min s':>7s}  stderr")
    for command in COMMANDS:
        times, stderr = [], ""
        for _ in range(args.repeat):
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "tfrcnn.cli", *command],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            times.append(time.perf_counter() - start)
            stderr = out.stderr.strip()
        label = "tfrcnn " + " ".join(command)
        shown = "(empty)" if not stderr else f"{len(stderr.splitlines())} line(s): {stderr[:60]}"
        print(f"{label:45s} {statistics.median(times):9.2f} {min(times):7.2f}  {shown}")


if __name__ == "__main__":
    main()
