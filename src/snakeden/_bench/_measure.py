"""One measurement, in a fresh process: ``python -m snakeden._bench._measure SPEC RESULT``.

Every (scenario, variant, contender, repetition) runs in its own interpreter, so no contender
inherits another's imported modules, threads, forkserver or leftover workers, and a stuck
measurement can be killed (with its whole process group) without taking the harness down.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from snakeden._bench._common import Context, NotApplicable, Settings
from snakeden._bench._registry import BY_ID


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    contender = BY_ID[spec["contender"]]
    settings = Settings.from_json(spec["settings"])
    heavy = ("numpy", "snakeden._bench.heavy_import")
    with tempfile.TemporaryDirectory(prefix="snakeden-bench-") as tmp:
        ctx = Context(c_echo=spec.get("c_echo"), tmpdir=tmp)
        t0 = time.perf_counter()
        try:
            runner = contender.resolve()
            outcome = runner(contender.id, spec["scenario"], spec.get("variant"), settings, ctx)
        except NotApplicable as exc:
            return {"status": "n/a", "note": str(exc)}
        except ImportError as exc:
            return {"status": "skipped", "note": f"import failed: {exc}"}
        except Exception as exc:
            return {
                "status": "error",
                "note": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        return {
            "status": "ok",
            "samples": outcome.samples,
            "notes": outcome.notes,
            "info": outcome.info,
            "wall_s": time.perf_counter() - t0,
            # Modules a forking pool would hand its workers for free:
            "parent_had": [m for m in heavy if m in sys.modules],
        }


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    result = measure(json.loads(Path(spec_path).read_text()))
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
