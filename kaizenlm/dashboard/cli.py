"""`kaizen dashboard`: the Streamlit dashboard, reading only the controller's admin API.

It runs `streamlit run kaizenlm/dashboard/app.py` as a child process (headless, no usage
statistics) with the controller's URL and admin key in its environment
(KAIZEN_CONTROLLER_URL, KAIZEN_ADMIN_KEY), and stops it on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from kaizenlm.command import Command
from kaizenlm.errors import UsageError

HELP = "serve the Streamlit dashboard (traffic, experiments, models, training, knowledge, feedback, jobs)"
EXAMPLE = "kaizen dashboard --port 8501   # then open http://127.0.0.1:8501"

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"


def add_arguments(p) -> None:
    p.add_argument("--port", type=int, help="listen port (default: dashboard.port, 8501)")
    p.add_argument("--host", help="listen address (default: dashboard.host, 127.0.0.1)")
    p.add_argument("--controller", metavar="URL",
                   help="controller base URL to read from (default: KAIZEN_CONTROLLER_URL, dashboard.controller_url, "
                        "or controller.host:port)")


def controller_url(cfg, override: str | None = None) -> str:
    """Where the dashboard reads: --controller, KAIZEN_CONTROLLER_URL, dashboard.controller_url, controller.host:port."""
    url = override or os.environ.get("KAIZEN_CONTROLLER_URL") or cfg.dashboard.controller_url or cfg.controller_url
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--controller '{url}' is not an http(s) URL; use e.g. http://127.0.0.1:8401")
    return url.rstrip("/")


def streamlit_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
            "--server.address", host, "--server.port", str(port), "--browser.gatherUsageStats", "false",
            "--client.toolbarMode", "minimal"]


def run(args, cfg) -> int:
    port = args.port if args.port is not None else cfg.dashboard.port
    if not 1 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port (1-65535)")
    host = args.host or cfg.dashboard.host
    env = {**os.environ, "KAIZEN_CONTROLLER_URL": controller_url(cfg, args.controller),
           "KAIZEN_ADMIN_KEY": cfg.auth.admin_key, "KAIZEN_HOME": str(cfg.home)}
    print(f"dashboard on http://{host}:{port}, reading {env['KAIZEN_CONTROLLER_URL']}", flush=True)
    child = subprocess.Popen(streamlit_command(host, port), env=env)

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        return child.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the child too (same process group): let it finish
        try:
            return child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            return 130


DASHBOARD = Command(help=HELP, example=EXAMPLE, add_arguments=add_arguments, run=run)
