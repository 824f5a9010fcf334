"""The listener as a deployment runs it: several processes sharing one port (SO_REUSEPORT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dimse_support import AE_TITLE, CORPUS, dcmtk, free_port, tool


def test_listener_processes_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    environment = {
        **os.environ,
        "PIXPORT_STORAGE__DATA_DIR": str(tmp_path / "data"),
        "PIXPORT_DIMSE__PORT": str(port),
        "PIXPORT_DIMSE__WORKERS": "2",
        "PIXPORT_DIMSE__ALLOW_ANY_CALLER": "true",
    }
    supervisor = subprocess.Popen([sys.executable, "-m", "pixport.dimse.listener"], env=environment)
    try:
        deadline = time.monotonic() + 30
        while dcmtk("echoscu", "-aec", AE_TITLE, "127.0.0.1", port).returncode != 0:
            assert time.monotonic() < deadline, "listener did not start"
            time.sleep(0.2)
        files = sorted((CORPUS / "modality" / "ct").glob("*.dcm"))
        results = [
            subprocess.Popen([tool("dcmsend"), "-dn", "-aec", AE_TITLE, "127.0.0.1", str(port), str(f)]) for f in files
        ]
        assert [p.wait(60) for p in results] == [0] * len(files)
        children = subprocess.run(["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True, check=False)
        assert len(children.stdout.split()) == 2
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(20) is not None
