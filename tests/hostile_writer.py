"""Helper of tests/test_hostile.py, run as a subprocess: writes a report folder with
``staged_folder`` and sends itself a signal at a chosen stage, or races another copy.

    python hostile_writer.py OUT STAGE SIGNAL OVERWRITE TAG     # killed at STAGE
    python hostile_writer.py OUT race N TAG                      # N publishes with overwrite

Exit codes: 0 written, 2 OutputError (one line on stderr), 130 interrupted.
"""

import json
import os
import signal
import sys
import time

from captum_unicam.output import publish


def write(out, overwrite, tag):
    with publish.staged_folder(out, overwrite=overwrite) as tmp:
        (tmp / "part0.txt").write_text(tag)
        publish._stage("writing")
        (tmp / "part1.txt").write_text(tag)
        (tmp / "metrics.json").write_text(json.dumps({"format": publish.REPORT_FORMAT, "tag": tag}))


def main(argv):
    out = argv[0]
    try:
        with publish.terminate_as_interrupt():
            if argv[1] == "race":
                n, tag = int(argv[2]), argv[3]
                refused = 0
                for i in range(n):
                    try:
                        write(out, True, f"{tag}-{i}")
                    except publish.OutputError:
                        refused += 1
                print(f"refused {refused}")
                return 0
            stage, sig, overwrite, tag = argv[1], argv[2], argv[3] == "1", argv[4]

            def hook(name):
                if name == stage:
                    os.kill(os.getpid(), getattr(signal, sig))
                    time.sleep(10)  # SIGKILL ends us here; SIGTERM / SIGINT raise here

            publish._HOOK = hook
            write(out, overwrite, tag)
            return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except publish.OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
