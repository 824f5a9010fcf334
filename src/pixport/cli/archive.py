"""``pixport archive``: import media, check the archive, serve DICOMweb.

Exit codes: 0 success; 1 some objects were rejected or conflicted (import) or an index row has
no intact blob (check); 2 bad settings; 3 storage failure (mapped in ``cli/main.py``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import structlog
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pixport.archive.limits import DEFAULT_BATCH_SIZE, DEFAULT_GRACE_SECONDS
from pixport.cli.common import progress_bar, settings_from
from pixport.config import Settings
from pixport.wiring import build_archive

if TYPE_CHECKING:
    from pixport.archive.check import CheckReport
    from pixport.archive.media import ImportSummary

EXIT_REJECTED = 1
MAX_SKIPPED_SHOWN = 20

archive_app = typer.Typer(
    help="The archive: import media (folders, ZIP files, DICOMDIR), check integrity, serve DICOMweb.",
    no_args_is_help=True,
)


def _logs_to_stderr() -> None:
    """Keep stdout for the command's output (``--json`` must parse); logs go to stderr.

    Only when nothing configured structlog yet (``cli/main.py`` may do it for every command).
    """
    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=False)


@archive_app.command("import")
def import_media(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="Files, folders, ZIP files or DICOMDIR media to import.")],
    *,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=10_000, help="Objects per index transaction.")
    ] = DEFAULT_BATCH_SIZE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Import DICOM files from folders, ZIP files and DICOMDIR media (e.g. a patient's CD)."""
    _logs_to_stderr()
    settings = settings_from(ctx)
    archive = build_archive(settings)
    # Loaded here, not at import: `pixport archive serve` keeps its supervisor free of pydicom.
    from pixport.archive.media import MediaImporter  # noqa: PLC0415

    try:
        with progress_bar() as progress:
            task = progress.add_task("Importing", total=None)

            def on_progress(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            summary = MediaImporter(archive.ingest, batch_size=batch, progress=on_progress).import_paths(paths)
    finally:
        archive.close()
    if as_json:
        typer.echo(orjson.dumps(summary.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_summary(summary)
    if not summary.ok:
        raise typer.Exit(EXIT_REJECTED)


def _print_summary(summary: ImportSummary) -> None:
    from pixport.archive.media import iter_problems  # noqa: PLC0415

    console = _stdout()
    counts = Table(title="Import summary", show_header=False)
    counts.add_column("outcome")
    counts.add_column("objects", justify="right")
    counts.add_row("Found", str(summary.found))
    counts.add_row("Stored", str(summary.stored))
    counts.add_row("Duplicates (already stored)", str(summary.duplicates))
    counts.add_row("Conflicts (same UID, other content)", str(len(summary.conflicts)))
    counts.add_row("Rejected", str(len(summary.rejected)))
    counts.add_row("Skipped (DICOMDIR, not DICOM)", str(len(summary.skipped)))
    counts.add_row("Warnings", str(summary.warnings))
    console.print(counts)
    problems = Table(title="Not stored", show_lines=False)
    problems.add_column("outcome")
    problems.add_column("source", overflow="fold")
    problems.add_column("reason", overflow="fold")
    shown_skipped = 0
    for kind, problem in iter_problems(summary):
        if kind == "skipped":
            shown_skipped += 1
            if shown_skipped > MAX_SKIPPED_SHOWN:
                continue
        problems.add_row(kind, Text(problem.name), Text(problem.reason))
    if problems.row_count:
        console.print(problems)
    if shown_skipped > MAX_SKIPPED_SHOWN:
        console.print(f"... and {shown_skipped - MAX_SKIPPED_SHOWN} more skipped sources")
    if summary.ok:
        console.print("Result: every DICOM object was stored or was already stored.")
    else:
        console.print(
            f"Result: {len(summary.rejected)} rejected, {len(summary.conflicts)} conflicted; "
            "these objects were not stored."
        )


@archive_app.command("check")
def check(
    ctx: typer.Context,
    *,
    repair: Annotated[
        bool, typer.Option("--repair", help="Delete orphan blobs and stale staging files older than the grace.")
    ] = False,
    grace: Annotated[
        float, typer.Option("--grace", min=0, help="Seconds: leave younger garbage alone (ingest in flight).")
    ] = DEFAULT_GRACE_SECONDS,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify every index row against its blob; report (or sweep, with --repair) orphans and stale files."""
    _logs_to_stderr()
    settings = settings_from(ctx)
    archive = build_archive(settings)
    # Loaded here, not at import: `pixport archive serve` keeps its supervisor free of pydicom.
    from pixport.archive.check import check_archive  # noqa: PLC0415

    try:
        report = check_archive(archive, repair=repair, grace_seconds=grace)
    finally:
        archive.close()
    if as_json:
        typer.echo(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print_report(report)
    if not report.ok:
        raise typer.Exit(EXIT_REJECTED)


def _print_report(report: CheckReport) -> None:
    console = _stdout()
    counts = Table(title="Archive check" + (" and repair" if report.repair else ""), show_header=False)
    counts.add_column("item")
    counts.add_column("count", justify="right")
    counts.add_row("Instances checked", str(report.instances_checked))
    counts.add_row("Missing or altered blobs", str(len(report.problems)))
    counts.add_row("Orphan blobs (older than grace)", str(len(report.orphan_blobs)))
    counts.add_row("Orphan blobs (recent, left alone)", str(report.recent_orphan_blobs))
    counts.add_row("Blobs held for conflicts", str(report.conflict_blobs))
    counts.add_row("Stale staging files", str(report.stale_staging_files))
    if report.foreign_files:
        counts.add_row("Unknown files in the blob store", str(report.foreign_files))
    if report.repair:
        counts.add_row("Orphan blobs swept", str(report.swept_blobs))
        counts.add_row("Staging files swept", str(report.swept_staging_files))
    console.print(counts)
    if report.problems:
        problems = Table(title="Index rows without an intact blob")
        problems.add_column("problem")
        problems.add_column("SOP Instance UID", overflow="fold")
        problems.add_column("digest", overflow="fold")
        for problem in report.problems:
            problems.add_row(problem.kind, problem.sop_instance_uid, problem.digest)
        console.print(problems)
    if not report.repair and (report.orphan_blobs or report.stale_staging_files):
        console.print("Run with --repair to sweep the orphan blobs and stale staging files.")


@archive_app.command("conflicts")
def conflicts(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,  # noqa: FBT002
) -> None:
    """List refused instances whose SOP Instance UID is stored already with other content."""
    _logs_to_stderr()
    archive = build_archive(settings_from(ctx))
    try:
        found = archive.index.list_conflicts()
    finally:
        archive.close()
    if as_json:
        rows = [
            {
                "sop_instance_uid": c.sop_instance_uid,
                "stored_digest": c.stored_digest,
                "offered_digest": c.offered_digest,
                "source": c.source,
                "received_at": c.received_at,
            }
            for c in found
        ]
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"Conflicts: {len(found)}")
    for column in ("received at", "SOP Instance UID", "stored digest", "offered digest", "source"):
        table.add_column(column, overflow="fold")
    for c in found:
        table.add_row(c.received_at, c.sop_instance_uid, c.stored_digest[:16], c.offered_digest[:16], c.source)
    _stdout().print(table)


@archive_app.command("serve")
def serve(ctx: typer.Context) -> None:
    """Serve DICOMweb (STOW-RS, QIDO-RS, WADO-RS) on the configured HTTP listener."""
    settings = settings_from(ctx)
    # Imported lazily: the web stack loads only for this command (and may be absent from a build).
    try:
        server = importlib.import_module("pixport.dicomweb.server")
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("pixport"):
            raise
        typer.echo("pixport: the DICOMweb server is not available in this build", err=True)
        raise typer.Exit(EXIT_REJECTED) from exc
    run: Callable[[Settings], None] = server.run
    run(settings)
