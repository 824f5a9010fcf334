"""``pixport demo``: an archive with sample studies loaded, served over DICOMweb."""

from __future__ import annotations

import io
from collections import Counter
from typing import TYPE_CHECKING, Annotated

import typer

from pixport.cli.common import settings_from
from pixport.wiring import build_archive

if TYPE_CHECKING:
    from pixport.archive.staging import StagedFile


def demo(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: http.port).")] = None,
    load_only: Annotated[bool, typer.Option("--load-only", help="Load the samples, then exit.")] = False,  # noqa: FBT002
) -> None:
    """Load synthetic sample studies (Korean names, CT, MR, CR, US cine) and serve them."""
    from pixport.samples import sample_studies  # noqa: PLC0415  numpy and pydicom only when needed

    settings = settings_from(ctx)
    if port is not None:
        settings.http.port = port
    archive = build_archive(settings)
    staged: list[StagedFile] = []
    for dataset in sample_studies():
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        staged.append(archive.ingest.stage_stream(buffer))
    results = archive.ingest.ingest_staged(staged, source="demo")
    counts = Counter(r.status for r in results)
    archive.close()
    typer.echo(
        f"Sample studies: {counts['stored']} instances stored, {counts['duplicate']} already there, "
        f"{counts['rejected'] + counts['conflict']} refused."
    )
    if load_only:
        return
    root = f"http://{settings.http.host}:{settings.http.port}"
    typer.echo(
        "\n".join(
            [
                f"Archive data:   {settings.storage.data_dir.resolve()}",
                f"DICOMweb root:  {root}/dicomweb",
                f"Studies (JSON): {root}/dicomweb/studies",
                f"Korean names:   {root}/dicomweb/studies?PatientName=%ED%99%8D*   (홍*)",
                f"Health:         {root}/healthz",
                "Stop with Ctrl-C.",
            ]
        )
    )
    from pixport.dicomweb.server import run  # noqa: PLC0415

    run(settings)
