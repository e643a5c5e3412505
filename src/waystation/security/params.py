"""Bounds for request values that end up in database queries, shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

# Integer keys are 32-bit on PostgreSQL and at most 64-bit on SQLite: a larger number cannot name a row,
# and would fail inside the database driver (a 500) instead of answering 422.
MAX_ROW_ID = 2**31 - 1

RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]

# Text keys in paths are no longer than the columns that hold them, so nothing longer reaches a query.
DeviceKey = Annotated[str, Path(min_length=1, max_length=64)]  # device ids
NameKey = Annotated[str, Path(min_length=1, max_length=64)]  # usernames, flow codes
StationKey = Annotated[str, Path(min_length=1, max_length=32)]
RequestKey = Annotated[str, Path(min_length=1, max_length=40)]  # command request ids
ChannelKey = Annotated[str, Path(min_length=1, max_length=200)]
