"""The child process of `train_in_child` (tumor_edge.train.isolated): `python -m tumor_edge.train.child REQUEST
RESULT` runs `run_training` on the config in REQUEST with the backend its environment chose, and writes the run
folder, or the one-line error and its class, to RESULT. Its own module, so that `fit` (which starts the child) and
the child's entry point (which runs `fit`) do not import each other.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tumor_edge import errors
from tumor_edge.train.isolated import config_from_dict


def main(request: str, result: str) -> int:
    from tumor_edge.train.fit import run_training

    config = config_from_dict(json.loads(Path(request).read_text()))
    try:
        run = run_training(config)
    except errors.TumorEdgeError as err:
        Path(result).write_text(json.dumps({"error": str(err), "type": type(err).__name__}))
        return err.exit_code
    Path(result).write_text(json.dumps({"run": str(run) if run else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
