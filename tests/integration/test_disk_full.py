"""Disk full: STOW-RS answers 507, and the archive is intact (a real, small tmpfs as the disk)."""

from __future__ import annotations

import errno
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_dicomweb import CT, Node, multipart_body, split_multipart, start_node, stow, uids

from pixport.samples import PATIENTS, ct_series


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = os.geteuid() == 0 and (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], check=False).returncode
        == 0
    )
    if not mounted:
        # Without the right to mount, simulate the same fault where the disk would give it.
        real_write = os.write
        budget = {"left": 3 * 1024 * 1024}

        def write(fd: int, data: bytes | memoryview) -> int:
            budget["left"] -= len(data)
            if budget["left"] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write)
    try:
        yield mount_point
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _large_request() -> tuple[bytes, str]:
    files = []
    for dataset in ct_series(PATIENTS[1], "disk-full", slices=8, size=512):
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return multipart_body(files)


def test_disk_full_is_507_and_earlier_data_is_intact(small_disk: Path) -> None:
    node: Node
    for node in start_node(small_disk):
        assert stow(node, [CT]).status_code == 200
        body, content_type = _large_request()  # 4 MiB: more than the disk holds
        response = httpx.post(node.dicomweb + "/studies", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 507
        assert "space" in response.text
        # Nothing of the refused request is visible or left behind; the earlier instance is intact.
        assert node.archive.index.count_instances() == 1
        assert list(node.archive.blobs.staging_dir.iterdir()) == []
        study, series, sop = uids(CT)
        retrieved = httpx.get(f"{node.dicomweb}/studies/{study}/series/{series}/instances/{sop}")
        assert split_multipart(retrieved)[0][1] == CT.read_bytes()
        # And the node still takes what fits.
        assert stow(node, [CT]).status_code == 200
