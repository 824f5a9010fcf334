"""errors.storage_error: one mapping of failed file operations for every backend."""

from __future__ import annotations

import errno
import os

import pytest

from pixport.errors import OutOfResources, StorageUnavailable, storage_error


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_out_of_resources(code: int) -> None:
    error = storage_error(OSError(code, os.strerror(code), "/archive/tmp/secret-name"), full="no space", failed="x")
    assert type(error) is OutOfResources
    assert str(error) == "no space"


def test_any_other_failure_names_the_system_reason_never_the_path() -> None:
    exc = OSError(errno.EIO, os.strerror(errno.EIO), "/archive/blobs/ab/Hong Gildong.dcm")
    error = storage_error(exc, full="no space", failed="blob store failed")
    assert type(error) is StorageUnavailable
    assert str(error) == "blob store failed: Input/output error"
    assert "Hong" not in str(error)
    assert "Hong" in str(exc)  # what a careless str(exc) would have leaked


def test_an_error_without_a_reason_is_named_by_its_type() -> None:
    error = storage_error(PermissionError(), full="no space", failed="staging area failed")
    assert str(error) == "staging area failed: PermissionError"
