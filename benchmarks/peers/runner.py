"""Run the peers of make bench in subprocesses (as engine_bench.py runs bare_faust.py).

``quix_run`` runs ``quix_rows.py`` with the interpreter of a virtualenv of its own,
``.local/peers/quix`` (created and filled from ``requirements.txt`` on first use: the pinned
quixstreams cannot share kpistream's .venv, see there), its state in a temporary directory
removed afterwards, and deletes the changelog and repartition topics Quix created.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIREMENTS = HERE / "requirements.txt"


def quix_python() -> str:
    """The peer's interpreter, installing the pinned requirements when they changed."""
    venv = Path(os.environ.get("KPISTREAM_LOCAL_DIR", ROOT / ".local")) / "peers" / "quix"
    python, stamp = venv / "bin" / "python", venv / "requirements.txt"
    wanted = REQUIREMENTS.read_text()
    if not stamp.exists() or stamp.read_text() != wanted:
        steps = [[sys.executable, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                 [str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"the Quix Streams peer needs quixstreams "
                                 f"({REQUIREMENTS.relative_to(ROOT)}); installing it into "
                                 f"{venv} failed: {' '.join(step)}:\n{done.stderr[-2000:]}")
        stamp.write_text(wanted)
    check = subprocess.run([str(python), "-c", "import quixstreams"], capture_output=True,
                           text=True)
    if check.returncode:
        raise SystemExit(f"quixstreams is not importable by {python} (delete {venv} to "
                         f"reinstall it from {REQUIREMENTS}):\n{check.stderr[-2000:]}")
    return str(python)


async def _drop_internal_topics(bootstrap: str, group: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [topic for topic in await admin.list_topics()
                if topic.startswith((f"changelog__{group}--", f"repartition__{group}--"))]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


def quix_run(bootstrap: str, topics: list[str], expected: int, timeout_s: float,
             rates: dict[str, float]) -> dict[str, float]:
    """Events/s and peak RSS (MB) of quix_rows.py over ``topics`` (orders, ad spend, surveys
    in that order) until it has processed ``expected`` records."""
    python = quix_python()
    group = f"quixpeer-{uuid.uuid4().hex[:8]}"
    state_dir = tempfile.mkdtemp(prefix="quixpeer-")
    env = {**os.environ, "QUIX_TOPICS": ",".join(topics), "QUIX_EXPECTED": str(expected),
           "QUIX_BOOTSTRAP": bootstrap, "QUIX_GROUP": group, "QUIX_STATE_DIR": state_dir,
           "QUIX_RATES": json.dumps(rates)}
    try:
        out = subprocess.run([python, str(HERE / "quix_rows.py")], env=env,
                             capture_output=True, text=True, timeout=timeout_s, cwd="/tmp")
    except subprocess.TimeoutExpired:
        raise SystemExit(f"the Quix Streams peer did not process {expected} records in "
                         f"{timeout_s:.0f}s") from None
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        asyncio.run(_drop_internal_topics(bootstrap, group))
    found = re.search(r"\brate (\d+) rss ([\d.]+)", out.stdout)
    if found:
        return {"rate": float(found.group(1)), "rss_mb": float(found.group(2))}
    raise SystemExit(f"the Quix Streams peer gave no rate: {out.stderr[-2000:]}")
