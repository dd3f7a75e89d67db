"""What one instance of the served model costs Triton: the Python-backend stub's resident memory and load time.

``python -m bench.triton_stub [--code-root DIR]`` exports the demo model (trained once and cached, as ``make demo``
does) into a fresh repository, starts a Triton of its own on free ports with one model instance, and reports the
stub process's RSS and the seconds from the load request to "ready". ``--code-root`` runs the model code of another
checkout (for example an older commit in a ``git worktree``) on the same exported weights, so two versions of the
serving code are compared on one model; its ``model_repository/postlens/model.py`` and packages are the ones used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.demo import DEMO_POSTS, DEMO_SEED, demo_checkpoint, synthetic_data
from deploy.local import triton_command
from deploy.process import descendants, free_port, rss_mb, spawn, stop, tail
from postlens.runtime.exported import TRITON_CODE_FILE
from postlens.settings import get_settings
from trainer.export import export_model

THIS_CHECKOUT = Path(__file__).resolve().parent.parent
REPORTS = THIS_CHECKOUT / "reports"
STUB_NAME = "triton_python_backend_stub"
READY_TIMEOUT_S = 600.0


def stub_pids(server_pid: int) -> list[int]:
    pids = []
    for pid in descendants(server_pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith(STUB_NAME[:15]):  # comm is cut at 15
                pids.append(pid)
        except OSError:
            continue
    return pids


# The venv's editable install of this checkout resolves `postlens`/`trainer` through a meta-path finder, and the
# stub's embedded interpreter ignores PYTHONPATH: another checkout's model.py gets a prelude that imports from it.
FOREIGN_PRELUDE = """import sys
sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in getattr(finder, "__module__", "")]
sys.path.insert(0, {root!r})
"""


def measure(repository: Path, scratch: Path) -> dict[str, float]:
    """Serve ``repository`` (one model instance); the stub's RSS (MiB) and the seconds until the model is ready."""
    http_port = free_port()
    spec = triton_command(repository, grpc_port=free_port(), http_port=http_port, metrics_port=free_port())
    log_path = scratch / "triton.log"
    started = time.perf_counter()
    server = spawn(spec, log_path)
    try:
        deadline = started + READY_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://localhost:{http_port}/v2/models/postlens/ready", timeout=2).close()
                break
            except (OSError, urllib.error.URLError):
                if time.perf_counter() > deadline or "failed to load" in log_path.read_text():
                    raise SystemExit(
                        f"the model did not become ready in {READY_TIMEOUT_S:g}s:\n{tail(log_path)}"
                    ) from None  # the server's log says why; the refused connection does not
                time.sleep(0.1)
        load_s = time.perf_counter() - started
        time.sleep(2.0)  # let the stub's lazily imported modules settle before reading its memory
        stubs = stub_pids(server)
        if len(stubs) != 1:
            raise SystemExit(f"expected one {STUB_NAME}, found {len(stubs)}")
        return {"stub_rss_mb": rss_mb(stubs[0]) or 0.0, "load_s": round(load_s, 2)}
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.triton_stub", description=__doc__.splitlines()[0])
    parser.add_argument("--code-root", type=Path, default=THIS_CHECKOUT)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint to serve (default: the demo model)")
    args = parser.parse_args()
    settings = get_settings()
    checkpoint = args.checkpoint or demo_checkpoint(
        settings.home / "demo", synthetic_data(settings.home / "demo", DEMO_POSTS, DEMO_SEED)
    )
    with tempfile.TemporaryDirectory(prefix="postlens-stub-") as scratch:
        repository = Path(scratch) / "repo"
        version_dir = export_model(checkpoint, repository)
        code_root = args.code_root.resolve()
        model_code = (code_root / "model_repository" / "postlens" / TRITON_CODE_FILE).read_text()
        if code_root != THIS_CHECKOUT:
            model_code = FOREIGN_PRELUDE.format(root=str(code_root)) + model_code.replace(
                "from __future__ import annotations\n", ""
            )
        (version_dir / TRITON_CODE_FILE).write_text(model_code)
        figures = measure(repository, Path(scratch))
    result = {
        "label": args.label,
        "code_root": str(args.code_root),
        "checkpoint": str(checkpoint),
        **figures,
        "machine": f"{platform.node()}, {os.cpu_count()} cores",
    }
    print(json.dumps(result))
    REPORTS.mkdir(exist_ok=True)
    with (REPORTS / "triton_stub.jsonl").open("a") as out:
        out.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
