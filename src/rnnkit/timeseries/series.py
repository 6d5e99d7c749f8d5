"""The series: §9.1's synthetic one, or one numeric column of a CSV file.

A CSV file is read whole, missing values are handled by one of :data:`MISSING` (interpolated,
dropped or refused) and rows can be put in time order; each thing done to the data is said in
the series' ``notes``, so that a run records what it trained on."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from rnnkit.errors import RnnkitError

D2L_STEPS, D2L_TRAIN, D2L_NOISE, D2L_FREQUENCY = 1000, 600, 0.2, 0.01  # §9.1's constants
MISSING = ("interpolate", "drop", "error")
NA = {"", "na", "n/a", "nan", "null", "none", "-"}


@dataclass
class Series:
    """A real-valued series (T,) in float64, with where it came from and what was done to it."""

    values: torch.Tensor
    source: str
    notes: list[str] = field(default_factory=list)
    sha1: str | None = None  # of the CSV file it was read from


def synthetic_d2l(seed: int = 0, steps: int = D2L_STEPS) -> Series:
    """§9.1's series: ``x_t = sin(0.01 t) + 0.2 * N(0, 1)``, t = 1..steps, from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(1, steps + 1, dtype=torch.float64)
    noise = torch.randn(steps, generator=generator, dtype=torch.float64)
    return Series(torch.sin(D2L_FREQUENCY * time) + D2L_NOISE * noise, f"synthetic d2l (seed {seed})")


def read_csv_series(
    path: str | os.PathLike, column: str, time_column: str | None = None, missing: str = "interpolate"
) -> Series:
    """One numeric column of a CSV file (lines starting with ``#`` before the header are skipped).

    Empty cells and NA/NaN/null are missing values: ``interpolate`` fills gaps inside the series
    linearly and drops missing values at either end, ``drop`` removes every row that lacks one,
    ``error`` refuses the file; what was done is said in ``notes``. With ``time_column`` the rows
    are put in time order (numbers, ISO dates or ``19-Sep-03``); repeated times are refused."""
    if missing not in MISSING:
        raise RnnkitError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    rows, skipped = _read_rows(path, (column, time_column))
    notes: list[str] = []
    if time_column is not None:
        rows = _in_time_order(path, rows, time_column, skipped, notes)
    values = _column_values(path, rows, column)
    values = _handle_missing(path, column, values, missing, notes)
    sha1 = hashlib.sha1(Path(path).read_bytes()).hexdigest()
    return Series(torch.tensor(values, dtype=torch.float64), f"{path} column {column}", notes, sha1)


def _read_rows(path: str | os.PathLike, names: tuple[str | None, ...]) -> tuple[list[dict[str, str]], int]:
    """The data rows of ``path``, each a dict by column name, and how many ``#`` lines preceded
    the header; refuses a file whose header lacks one of ``names`` (None: not asked for)."""
    from rnnkit.text import read_text

    lines = read_text(path).splitlines()
    skipped = 0
    while skipped < len(lines) and lines[skipped].lstrip().startswith("#"):
        skipped += 1
    table = list(csv.reader(io.StringIO("\n".join(lines[skipped:]))))
    header = [name.strip() for name in table[0]] if table else []
    for name in names:
        if name is not None and name not in header:
            raise RnnkitError(f"{path}: no column {name!r} (columns: {', '.join(header) or 'none'})")
    # a blank line is a row whose cells are all missing (in a one-column file: a missing value)
    return [dict(zip(header, row, strict=False)) for row in table[1:]], skipped


def _parse_time(text: str):
    """Seconds (or the number itself) of a time cell, None if it is none of the accepted forms."""
    try:
        return float(text)
    except ValueError:
        pass
    for parse in (datetime.fromisoformat, lambda t: datetime.strptime(t, "%d-%b-%y")):
        try:
            return parse(text.strip()).timestamp()
        except ValueError:
            continue
    return None


def _in_time_order(
    path: str | os.PathLike, rows: list[dict[str, str]], time_column: str, skipped: int, notes: list[str]
) -> list[dict[str, str]]:
    """``rows`` sorted by ``time_column`` (a note added if that moved any); an unreadable time
    is refused with its line in the file (``skipped`` comment lines and the header before the
    data), repeated times because their order would be a guess."""
    times = [_parse_time(row.get(time_column) or "") for row in rows]  # a short row: no time
    bad = next((i for i, t in enumerate(times) if t is None), None)
    if bad is not None:
        raise RnnkitError(
            f"{path}: line {skipped + bad + 2}: cannot read time {rows[bad].get(time_column)!r} "
            f"(numbers, ISO dates such as 2003-09-19, or 19-Sep-03)"
        )
    if len(set(times)) != len(times):
        raise RnnkitError(f"{path}: repeated times in column {time_column!r}")
    order = sorted(range(len(rows)), key=times.__getitem__)
    if order != list(range(len(rows))):
        rows = [rows[i] for i in order]
        notes.append(f"rows put in time order by {time_column!r}")
    return rows


def _column_values(path: str | os.PathLike, rows: list[dict[str, str]], column: str) -> list[float | None]:
    """The numbers in ``column``, None where a value is missing (:data:`NA`); anything else that
    is not a finite number is refused, naming its data row."""
    values: list[float | None] = []
    for number, row in enumerate(rows):
        cell = (row.get(column) or "").strip()
        if cell.lower() in NA:
            values.append(None)
            continue
        try:
            value = float(cell)
        except ValueError:
            raise RnnkitError(f"{path}: column {column!r} is not numeric ({cell!r} in data row {number + 1})") from None
        if not math.isfinite(value):
            raise RnnkitError(f"{path}: column {column!r} holds {cell!r} in data row {number + 1}")
        values.append(value)
    return values


def _handle_missing(
    path: str | os.PathLike, column: str, values: list[float | None], missing: str, notes: list[str]
) -> list[float]:
    """``values`` without missing ones, as ``missing`` says (:func:`read_csv_series`)."""
    gaps = sum(v is None for v in values)
    if gaps and missing == "error":
        raise RnnkitError(f"{path}: column {column!r} has {gaps} missing values (--missing interpolate or drop)")
    if gaps and missing == "drop":
        notes.append(f"{gaps} rows without a value dropped")
        return [v for v in values if v is not None]
    if gaps:
        return _interpolate(path, column, values, gaps, notes)
    return values


def _interpolate(
    path: str | os.PathLike, column: str, values: list[float | None], gaps: int, notes: list[str]
) -> list[float]:
    """``values`` from the first known one to the last, the ``gaps`` missing ones between filled
    linearly: a value outside the known ones would be a guess, so the ends are dropped."""
    known = [i for i, v in enumerate(values) if v is not None]
    if not known:
        raise RnnkitError(f"{path}: column {column!r} has no values")
    first, last = known[0], known[-1]
    ends = first + (len(values) - 1 - last)
    inner = gaps - ends
    filled = torch.tensor([math.nan if v is None else v for v in values[first : last + 1]], dtype=torch.float64)
    where = torch.arange(len(filled), dtype=torch.float64)
    have = ~torch.isnan(filled)
    filled[~have] = torch.from_numpy(np.interp(where[~have].numpy(), where[have].numpy(), filled[have].numpy()))
    if ends:
        notes.append(f"{ends} missing values at the ends dropped")
    if inner:
        notes.append(f"{inner} missing values inside the series linearly interpolated")
    return filled.tolist()
