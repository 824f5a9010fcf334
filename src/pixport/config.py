"""Typed settings, built once at start-up.

Sources, highest priority first: keyword arguments, ``PIXPORT_*`` environment variables
(nested with ``__``, e.g. ``PIXPORT_STORAGE__BACKEND=scale``), the TOML file named by
``PIXPORT_CONFIG`` (or passed as ``--config``), then the defaults below.  Every setting is
documented in ``docs/configuration.md``; a test keeps the two in step.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MiB = 1024 * 1024
GiB = 1024 * MiB


class Section(BaseModel):
    """A settings section: unknown keys are refused, so a typo is an error, not a default."""

    model_config = ConfigDict(extra="forbid")


class HttpSettings(Section):
    """The HTTP (DICOMweb) listener."""

    host: str = "127.0.0.1"
    port: int = Field(default=8042, ge=0, le=65535)
    workers: int = Field(default=0, ge=0, le=64)
    """Server processes sharing the port; 0 means one per CPU core."""
    public_url: str | None = None
    """Base URL that clients use to reach this node; RetrieveURL and BulkDataURI are built on
    it.  When unset, the URL of each request is used."""


class RemoteNode(Section):
    """A DICOM node this one talks to: a PACS, a modality, another archive."""

    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False
    """Connect with TLS (DICOM PS3.15 BCP 195) when this node calls it."""


class DimseSettings(Section):
    """The DICOM (DIMSE) listener and the nodes it knows."""

    ae_title: str = Field(default="PIXPORT", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    workers: int = Field(default=0, ge=0, le=64)
    """Listener processes accepting from one listening socket; 0 means one per CPU core."""
    remotes: list[RemoteNode] = Field(default_factory=list)
    """Known nodes: C-MOVE destinations, and the callers accepted when ``allow_any_caller`` is off."""
    allow_any_caller: bool = False
    check_caller_host: bool = False
    """Refuse a known AE title calling from any address but its node's ``host`` (resolved at start)."""
    """Accept associations from calling AE titles not in ``remotes``."""
    tls_certificate: Path | None = None
    """PEM certificate (chain) of this node; with ``tls_private_key``, the listener speaks TLS."""
    tls_private_key: Path | None = None
    tls_ca_certificates: Path | None = None
    """PEM bundle of CAs whose certificates peers must present (mutual TLS when set)."""
    acse_timeout: float = Field(default=30, gt=0)
    dimse_timeout: float = Field(default=60, gt=0)
    network_timeout: float = Field(default=60, gt=0)


class StorageSettings(Section):
    """Where instances and their index live.  ``wiring.py`` is the only reader of ``backend``."""

    backend: Literal["embedded", "scale"] = "embedded"
    data_dir: Path = Path("pixport-data")
    """Embedded: blobs and the SQLite index.  Scale: temporary files during ingest only."""
    database_url: str | None = None
    """Scale: SQLAlchemy URL of the PostgreSQL index, e.g.
    ``postgresql+psycopg://user@127.0.0.1:5432/pixport``."""
    s3_endpoint_url: str | None = None
    s3_bucket: str = "pixport"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None


class LimitSettings(Section):
    """Hard limits applied to every ingested object, whatever the entry point."""

    max_object_bytes: int = Field(default=2 * GiB, ge=1024)
    max_request_bytes: int = Field(default=16 * GiB, ge=1024)
    max_element_bytes: int = Field(default=256 * MiB, ge=1024)
    """Largest value of any element other than Pixel Data."""
    max_sequence_depth: int = Field(default=16, ge=1, le=200)
    bulk_data_threshold: int = Field(default=1024, ge=0)
    """Binary values longer than this are sent as BulkDataURI in DICOM JSON metadata."""


class HubSettings(Section):
    """The hub (``pixport hub ...``): directory, patient index, registry, audit, relay."""

    data_dir: Path = Path("pixport-hub")
    """The hub's signing key (``hub-key.pem``), its public key (``hub-key.jwk``) and, unless
    ``database_url`` is set, its SQLite database."""
    database_url: str | None = None
    """SQLAlchemy URL of the hub's database (PostgreSQL at scale); default SQLite in ``data_dir``."""
    audience: str = "pixport-hub"
    """The hub's name in node assertions (their ``aud``)."""
    host: str = "127.0.0.1"
    port: int = Field(default=8040, ge=0, le=65535)
    operator_keys: list[Path] = Field(default_factory=list)
    """Public JWK files of the operators allowed to call the hub's API as ``operator``."""
    relay_cache_max_bytes: int = Field(default=20 * GiB, ge=0)
    """Bytes of studies the hub keeps in its relay cache (``data_dir/relay-cache``), least recently
    used evicted first; 0 turns the cache off (every read goes to the gateway)."""
    relay_cache_keep_after: int = Field(default=2, ge=1)
    """A copy of a study is kept from its Nth read from the gateway on (the first ones are only
    relayed, at full speed); 1 keeps a copy of every study read.  ``Cache-Control: no-cache``
    keeps one at once."""


class GatewaySettings(Section):
    """A hospital's gateway: the archive plus publishing to the hub."""

    institution_code: str | None = None
    """This hospital's code in the hub's directory; unset, the node is not a gateway."""
    signing_key: Path | None = None
    """PEM private key of the institution (``pixport gateway keys generate``)."""
    network_key: Path | None = None
    """The network key the operator provisions, for national keys (never leaves the gateway)."""
    hub_url: str | None = None
    """Base URL of the hub, e.g. ``http://127.0.0.1:8040``."""
    hub_key: Path | None = None
    """The hub's public JWK, pinned: hub calls and the signed directory are checked against it."""
    hub_audience: str = "pixport-hub"
    """The hub's ``audience`` setting."""
    auto_publish_after: float | None = Field(default=None, gt=0)
    """Publish a study automatically once it has received nothing for this many seconds."""
    hub_access_port: int | None = Field(default=None, ge=1, le=65535)
    """A second listener for the hub's calls only (``/hub-access``): expose this port to the
    hub and keep ``http.port`` (DICOMweb, publishing; unauthenticated) on the hospital network.
    Each listener then refuses the other's paths.  Unset: both on ``http.port``."""
    hub_access_host: str | None = None
    """Address of that listener (default ``http.host``), e.g. the interface facing the hub."""


class Settings(BaseSettings):
    """All of a node's settings."""

    model_config = SettingsConfigDict(
        env_prefix="PIXPORT_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    http: HttpSettings = HttpSettings()
    dimse: DimseSettings = DimseSettings()
    storage: StorageSettings = StorageSettings()
    limits: LimitSettings = LimitSettings()
    hub: HubSettings = HubSettings()
    gateway: GatewaySettings = GatewaySettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003  no .env files: settings are explicit
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = _CONFIG_FILE.get() or os.environ.get("PIXPORT_CONFIG")
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)


_CONFIG_FILE: ContextVar[Path | None] = ContextVar("pixport_config_file", default=None)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; ``config_file`` takes the place of ``PIXPORT_CONFIG``.

    Nothing global changes: server workers get the resulting settings through their
    environment (``dicomweb.server.settings_environment``), not by re-reading the file.
    """
    token = _CONFIG_FILE.set(config_file)
    try:
        return Settings(**overrides)
    finally:
        _CONFIG_FILE.reset(token)
