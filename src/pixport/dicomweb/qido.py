"""QIDO-RS (PS3.18 10.6): search for studies, series and instances."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from pixport.archive.node import Archive
from pixport.archive.query import ParsedQuery, parse_query
from pixport.dicomweb.responses import base_url, json_response, warning_header
from pixport.storage.base import Level, QueryRow

MODALITIES_IN_STUDY = "00080061"
INSTANCE_AVAILABILITY = "00080056"
RETRIEVE_URL = "00081190"
STUDY_SERIES_COUNT = "00201206"
STUDY_INSTANCE_COUNT = "00201208"
SERIES_INSTANCE_COUNT = "00201209"


def _search(level: Level) -> Any:
    async def endpoint(request: Request) -> Response:
        archive: Archive = request.app.state.archive
        parsed = parse_query(
            level,
            request.query_params.multi_items(),
            request.path_params.get("study"),
            request.path_params.get("series"),
        )
        rows = await run_in_threadpool(archive.index.search, parsed.query)
        base = base_url(request)
        documents = [_document(row, level, base, parsed) for row in rows]
        if parsed.include_all or parsed.include_fields:
            await run_in_threadpool(_add_included_fields, archive, rows, documents, parsed)
        body = orjson.dumps([dict(sorted(d.items())) for d in documents])
        return json_response(request, body, headers=warning_header(parsed.warnings))

    return endpoint


search_for_studies = _search("study")
search_for_series = _search("series")
search_for_instances = _search("instance")


def _add_included_fields(
    archive: Archive, rows: list[QueryRow], documents: list[dict[str, Any]], parsed: ParsedQuery
) -> None:
    """Fill includefield attributes that the level does not index from a representative instance.

    As a PACS does: the first instance of the study or series stands for it.  ``all`` adds every
    attribute of that instance except bulk data.
    """
    for row, document in zip(rows, documents, strict=True):
        wanted = {tag for tag in parsed.include_fields if "Value" not in document.get(tag, {})}
        if not (wanted or parsed.include_all):
            continue
        first = archive.index.list_metadata(row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid, 1)
        if not first:
            continue
        instance = orjson.loads(first[0])
        for tag, element in instance.items():
            if "BulkDataURI" in element or "InlineBinary" in element:
                continue
            if tag in wanted or (parsed.include_all and tag not in document):
                document[tag] = element


def _document(row: QueryRow, level: Level, base: str, parsed: ParsedQuery) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for piece in row.documents:
        document.update(orjson.loads(piece))
    if level == "study":
        document[MODALITIES_IN_STUDY] = (
            {"vr": "CS", "Value": row.modalities_in_study} if row.modalities_in_study else {"vr": "CS"}
        )
        document[STUDY_SERIES_COUNT] = {"vr": "IS", "Value": [row.number_of_series or 0]}
        document[STUDY_INSTANCE_COUNT] = {"vr": "IS", "Value": [row.number_of_instances or 0]}
        document[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base}/studies/{row.study_instance_uid}"]}
    elif level == "series":
        document[SERIES_INSTANCE_COUNT] = {"vr": "IS", "Value": [row.number_of_instances or 0]}
        document[RETRIEVE_URL] = {
            "vr": "UR",
            "Value": [f"{base}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"],
        }
    else:
        document[RETRIEVE_URL] = {
            "vr": "UR",
            "Value": [
                (
                    f"{base}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"
                    f"/instances/{row.sop_instance_uid}"
                )
            ],
        }
    document[INSTANCE_AVAILABILITY] = {"vr": "CS", "Value": ["ONLINE"]}
    for tag in parsed.include_fields:
        document.setdefault(tag, {"vr": _vr_of(tag)})
    return document


def _vr_of(tag: str) -> str:
    from pydicom.datadict import dictionary_VR  # noqa: PLC0415

    try:
        return str(dictionary_VR(int(tag, 16))).split(" or ")[0]
    except KeyError:
        return "UN"
