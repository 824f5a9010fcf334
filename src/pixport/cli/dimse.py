"""``pixport dimse``: DICOM networking as a client (echo, send, find, get, move) and ``serve``.

REMOTE is the AE title of a node in ``dimse.remotes``, or ``AET@host:port`` for any other node.
Exit codes: 0 success; 1 some instances were not stored, a source given to ``send`` could not
be read or held no DICOM instance, a ``get`` or ``move`` matched no instance, a peer refused or
is unavailable; 2 bad settings or an
unknown REMOTE (mapped in ``cli/main.py``).

pydicom and pynetdicom load inside the commands (``pixport.dimse.scu``), not at import.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
import structlog
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pixport.cli.common import progress_bar, settings_from
from pixport.config import Settings
from pixport.errors import BadQuery

if TYPE_CHECKING:
    from pixport.dimse.scu import Retrieval, SendResult

EXIT_FAILED = 1
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# Attributes asked back by `find` at each level, besides the query keys given.
RETURN_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientID", "PatientName", "PatientBirthDate", "NumberOfPatientRelatedStudies"),
    "STUDY": (
        "StudyInstanceUID",
        "PatientID",
        "PatientName",
        "StudyDate",
        "AccessionNumber",
        "StudyDescription",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances"),
    "IMAGE": ("SOPInstanceUID", "SOPClassUID", "InstanceNumber"),
}

dimse_app = typer.Typer(
    help="DICOM networking: echo, send to, query and retrieve from remote nodes; serve as a DICOM node.",
    no_args_is_help=True,
)

RemoteArg = Annotated[str, typer.Argument(help="AE title from dimse.remotes, or AET@host:port.")]


def _logs_to_stderr() -> None:
    if not structlog.is_configured():
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=False)


@dimse_app.command("echo")
def echo(ctx: typer.Context, remote: RemoteArg) -> None:
    """Verify that a DICOM node answers (C-ECHO)."""
    _logs_to_stderr()
    from pixport.dimse import scu  # noqa: PLC0415

    settings = settings_from(ctx).dimse
    node = scu.resolve_remote(settings, remote)
    status = scu.echo(settings, node)
    typer.echo(f"C-ECHO {scu.describe(node)}: status 0x{status:04X}")
    if status != 0:
        raise typer.Exit(EXIT_FAILED)


@dimse_app.command("send")
def send(
    ctx: typer.Context,
    remote: RemoteArg,
    paths: Annotated[list[Path], typer.Argument(help="DICOM files, folders or DICOMDIR media.")],
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Send DICOM files to a node (C-STORE), as stored when the node accepts their transfer syntax."""
    _logs_to_stderr()
    from pixport.archive.media import FileSource, discover, sniff  # noqa: PLC0415
    from pixport.dimse import scu  # noqa: PLC0415

    settings = settings_from(ctx).dimse
    node = scu.resolve_remote(settings, remote)
    found = discover(paths)
    # Set aside as expected (a DICOMDIR, a file that is not DICOM), or not read at all (a path
    # that does not exist, a file that cannot be read, a ZIP): the latter fails the command.
    skipped = [{"source": p.name, "reason": p.reason} for p in found.skipped]
    not_read = [{"source": p.name, "reason": p.reason} for p in found.rejected]
    files: list[Path] = []
    for source in found.sources:
        if not isinstance(source, FileSource):
            not_read.append({"source": source.name, "reason": "inside a ZIP file: extract it to send it"})
            continue
        try:
            reason = sniff(source.path)
        except OSError as exc:
            not_read.append({"source": source.name, "reason": f"cannot read file: {exc.strerror}"})
            continue
        if reason is None:
            files.append(source.path)
        else:
            skipped.append({"source": source.name, "reason": reason})
    with progress_bar() as progress:
        task = progress.add_task(f"Sending to {node.ae_title}", total=len(files))
        results = scu.send(settings, node, files, on_result=lambda _r: progress.advance(task))
    summary = _send_summary(scu.describe(node), results, skipped, not_read)
    if as_json:
        typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_send_summary(summary)
    if summary["failed"] or summary["not_read"] or not summary["found"]:
        raise typer.Exit(EXIT_FAILED)


def _send_summary(
    node: str, results: list[SendResult], skipped: list[dict[str, str]], not_read: list[dict[str, str]]
) -> dict[str, Any]:
    failed = [r for r in results if not r.ok]
    return {
        "node": node,
        "found": len(results),
        "sent": len(results) - len(failed),
        "sent_as_stored": sum(1 for r in results if r.ok and not r.transcoded),
        "sent_transcoded": sum(1 for r in results if r.ok and r.transcoded),
        "failed": len(failed),
        "not_read": len(not_read),
        "skipped": len(skipped),
        "failures": [
            {
                "source": r.source,
                "sop_instance_uid": r.sop_instance_uid,
                "status": None if r.status is None else f"0x{r.status:04X}",
                "reason": r.reason,
            }
            for r in failed
        ],
        "not_read_sources": not_read,
        "skipped_sources": skipped,
    }


def _print_send_summary(summary: dict[str, Any]) -> None:
    console = _stdout()
    counts = Table(title=f"Send summary ({summary['node']})", show_header=False)
    counts.add_column("outcome")
    counts.add_column("instances", justify="right")
    counts.add_row("Found", str(summary["found"]))
    counts.add_row("Sent (stored by the node)", str(summary["sent"]))
    counts.add_row("  as stored here", str(summary["sent_as_stored"]))
    counts.add_row("  decoded to Explicit VR Little Endian", str(summary["sent_transcoded"]))
    counts.add_row("Failed", str(summary["failed"]))
    counts.add_row("Not read (missing, unreadable, in a ZIP)", str(summary["not_read"]))
    counts.add_row("Skipped (DICOMDIR, not DICOM)", str(summary["skipped"]))
    console.print(counts)
    if summary["failures"]:
        problems = Table(title="Not stored by the node")
        for column in ("source", "SOP Instance UID", "status", "reason"):
            problems.add_column(column, overflow="fold")
        for f in summary["failures"]:
            problems.add_row(Text(f["source"]), f["sop_instance_uid"] or "", f["status"] or "", Text(f["reason"] or ""))
        console.print(problems)
    if summary["not_read_sources"]:
        unread = Table(title="Not read")
        for column in ("source", "reason"):
            unread.add_column(column, overflow="fold")
        for u in summary["not_read_sources"]:
            unread.add_row(Text(u["source"]), Text(u["reason"]))
        console.print(unread)
    console.print(f"Result: {_send_result(summary)}")


def _send_result(summary: dict[str, Any]) -> str:
    """The summary's last line: what went wrong first, else that all went well."""
    problems = []
    if failed := summary["failed"]:
        problems.append(f"{_counted(failed, 'instance')} {'was' if failed == 1 else 'were'} not stored by the node")
    if not_read := summary["not_read"]:
        problems.append(f"{_counted(not_read, 'source')} could not be read")
    if problems:
        return "; ".join(problems) + "."
    if not summary["found"]:
        return "nothing was sent: no DICOM instance was found."
    return "every DICOM instance was stored by the node."


def _counted(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _parse_keys(keys: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for number, item in enumerate(keys, start=1):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            # Not the item itself: without its "=", a value (a patient's name) may be all it is.
            msg = f"query key #{number} is not written KEY=VALUE"
            raise BadQuery(msg)
        parsed[name.strip()] = value
    return parsed


@dimse_app.command("find")
def find(
    ctx: typer.Context,
    remote: RemoteArg,
    *,
    level: Annotated[
        str, typer.Option("--level", "-l", help="PATIENT, STUDY, SERIES or IMAGE.", case_sensitive=False)
    ] = "STUDY",
    keys: Annotated[
        list[str] | None,
        typer.Option("--key", "-k", help="KEY=VALUE (keyword or tag); KEY= asks for it back. Repeatable."),
    ] = None,
    model: Annotated[str, typer.Option("--model", help="Query model: study (root) or patient (root).")] = "study",
    as_json: Annotated[bool, typer.Option("--json", help="Print the matches as DICOM JSON.")] = False,
) -> None:
    """Query a node (C-FIND); print the matches as a table or as DICOM JSON."""
    _logs_to_stderr()
    from pixport.dimse import scu  # noqa: PLC0415

    wanted_level = level.upper()
    if wanted_level not in LEVELS or model not in {"study", "patient"}:
        msg = f"--level must be one of {', '.join(LEVELS)} and --model study or patient"
        raise BadQuery(msg)
    query = dict.fromkeys(RETURN_KEYS[wanted_level], "")
    query.update(_parse_keys(keys or []))
    settings = settings_from(ctx).dimse
    node = scu.resolve_remote(settings, remote)
    matches = scu.find(settings, node, _level(wanted_level), query, _model(model))
    if as_json:
        documents = [m.to_json_dict() for m in matches]
        typer.echo(orjson.dumps(documents, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"{len(matches)} {wanted_level.lower()} matches from {scu.describe(node)}")
    columns = [k for k in query if k not in {"QueryRetrieveLevel", "SpecificCharacterSet"}]
    for column in columns:
        table.add_column(column, overflow="fold")
    for match in matches:
        table.add_row(*(Text(_display(match, column)) for column in columns))
    _stdout().print(table)


def _display(match: Any, key: str) -> str:
    from pixport.archive.media import display_name  # noqa: PLC0415
    from pixport.dimse.scu import tag_of  # noqa: PLC0415

    element = match.get(tag_of(key))
    if element is None or element.value is None:
        return ""
    value = element.value
    text = "\\".join(str(v) for v in value) if element.VM > 1 else str(value)
    return display_name(text)


def _level(text: str) -> Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]:
    if text == "PATIENT":
        return "PATIENT"
    if text == "SERIES":
        return "SERIES"
    if text == "IMAGE":
        return "IMAGE"
    return "STUDY"


def _model(text: str) -> Literal["study", "patient"]:
    return "patient" if text == "patient" else "study"


def _print_retrieval(operation: str, node: str, retrieval: Retrieval, *, as_json: bool) -> None:
    summary: dict[str, Any] = {
        "operation": operation,
        "node": node,
        "status": f"0x{retrieval.status:04X}",
        "completed": retrieval.completed,
        "failed": retrieval.failed,
        "warning": retrieval.warning,
    }
    if operation == "C-GET":
        summary["stored"] = sum(1 for r in retrieval.instances if r.status == "stored")
        summary["duplicates"] = sum(1 for r in retrieval.instances if r.status == "duplicate")
        summary["not_stored"] = [
            {"sop_instance_uid": r.sop_instance_uid, "status": r.status, "reason": r.reason}
            for r in retrieval.instances
            if not r.ok
        ]
    if as_json:
        typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"{operation} from {node}", show_header=False)
    table.add_column("item")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if key not in {"operation", "node", "not_stored"}:
            table.add_row(key.replace("_", " ").capitalize(), str(value))
    _stdout().print(table)
    for problem in summary.get("not_stored", []):
        _stdout().print(f"Not stored: {problem['sop_instance_uid']} ({problem['status']}): {problem['reason']}")
    _stdout().print(f"Result: {_retrieval_result(operation, retrieval)}")


def _retrieval_result(operation: str, retrieval: Retrieval) -> str:
    """The summary's last line (see ``retrieved_nothing`` for the exit code)."""
    if retrieval.status != 0 or retrieval.failed:
        failed = f", {_counted(retrieval.failed, 'sub-operation')} failed" if retrieval.failed else ""
        return f"{operation} ended with status 0x{retrieval.status:04X}{failed}."
    not_stored = sum(1 for r in retrieval.instances if not r.ok)
    if not_stored:
        return f"{_counted(not_stored, 'instance')} received could not be stored here."
    if retrieved_nothing(retrieval):
        return "the node had no instance matching these UIDs."
    done = "stored here" if operation == "C-GET" else "sent"
    return f"{_counted(retrieval.completed + retrieval.warning, 'instance')} {done}."


def retrieved_nothing(retrieval: Retrieval) -> bool:
    """A retrieval that succeeded without a single sub-operation: no match (a mistyped UID, say)."""
    counted = retrieval.completed + retrieval.warning + retrieval.failed
    # A C-GET's own record too: a peer may leave the counts out of its final response.
    return retrieval.ok and counted == 0 and not retrieval.instances


@dimse_app.command("get")
def get(
    ctx: typer.Context,
    remote: RemoteArg,
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    series_uid: Annotated[str | None, typer.Argument(help="Series Instance UID (retrieve one series).")] = None,
    sop_uid: Annotated[str | None, typer.Argument(help="SOP Instance UID (retrieve one instance).")] = None,
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Retrieve a study, series or instance from a node (C-GET) into the local archive."""
    _logs_to_stderr()
    from pixport.dimse import scu  # noqa: PLC0415
    from pixport.wiring import build_archive  # noqa: PLC0415

    settings = settings_from(ctx)
    node = scu.resolve_remote(settings.dimse, remote)
    if sop_uid is not None and series_uid is not None:
        level, uids = "IMAGE", [sop_uid]
    elif series_uid is not None:
        level, uids = "SERIES", [series_uid]
    else:
        level, uids = "STUDY", [study_uid]
    archive = build_archive(settings)
    try:
        retrieval = scu.get(
            settings.dimse,
            node,
            _level(level),
            uids,
            archive,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
        )
    finally:
        archive.close()
    _print_retrieval("C-GET", scu.describe(node), retrieval, as_json=as_json)
    if not retrieval.ok or retrieved_nothing(retrieval):
        raise typer.Exit(EXIT_FAILED)


@dimse_app.command("move")
def move(
    ctx: typer.Context,
    remote: RemoteArg,
    destination: Annotated[str, typer.Argument(help="AE title the node sends the studies to (C-MOVE destination).")],
    study_uids: Annotated[list[str], typer.Argument(help="Study Instance UIDs.")],
    *,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Ask a node to send studies to another node (C-MOVE)."""
    _logs_to_stderr()
    from pixport.dimse import scu  # noqa: PLC0415

    settings = settings_from(ctx).dimse
    node = scu.resolve_remote(settings, remote)
    retrieval = scu.move(settings, node, destination, "STUDY", study_uids)
    _print_retrieval("C-MOVE", scu.describe(node), retrieval, as_json=as_json)
    if not retrieval.ok or retrieved_nothing(retrieval):
        raise typer.Exit(EXIT_FAILED)


@dimse_app.command("serve")
def serve(ctx: typer.Context) -> None:
    """Serve as a DICOM node (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET) on the configured port."""
    settings = settings_from(ctx)
    # Imported lazily: the listener loads pynetdicom only for this command.
    try:
        listener = importlib.import_module("pixport.dimse.listener")
        run: Callable[[Settings], None] = listener.run_listener
    except (ModuleNotFoundError, AttributeError) as exc:
        if isinstance(exc, ModuleNotFoundError) and (exc.name is None or not exc.name.startswith("pixport")):
            raise
        typer.echo("pixport: the DICOM listener is not available in this build", err=True)
        raise typer.Exit(EXIT_FAILED) from exc
    run(settings)
