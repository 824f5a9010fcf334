"""The hub as one object: its database, its key, and its services.

``Hub.open(settings)`` creates the data folder, the hub's signing key on first start (the
operator pins its public half, ``hub-key.jwk``, at every gateway and verifier) and the tables.
The server (``hub.api``) then opens the relay cache (``Hub.open_relay_cache``); the operator's
commands, which open the hub too, leave it alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, delete, insert
from sqlalchemy.exc import IntegrityError

from pixport.config import HubSettings
from pixport.errors import KeyNotTrusted
from pixport.hub.audit import AuditLog, RelayIntegrityFailed, create_tables
from pixport.hub.institutions import InstitutionService
from pixport.hub.registry import RegisteredManifest, Registry
from pixport.hub.relay_cache import FOLDER as RELAY_CACHE_FOLDER
from pixport.hub.relay_cache import IntegrityReport, RelayCache
from pixport.hub.schema import used_assertions
from pixport.trust.assertions import Caller, verify_assertion
from pixport.trust.directory import format_time
from pixport.trust.keys import PublicKey, SigningKey, jwk_thumbprint, public_key_from_jwk

HUB_SUBJECT = "hub"
OPERATOR_SUBJECT = "operator"


@dataclass
class Hub:
    """Directory, registry and audit log over one database, and the hub's signing key."""

    settings: HubSettings
    engine: Engine
    key: SigningKey
    audit: AuditLog
    institutions: InstitutionService
    registry: Registry
    operator_keys: dict[str, PublicKey]
    relay_cache: RelayCache | None = field(default=None, init=False)
    """Studies relayed before, verified against their manifests; open while the server runs."""

    @classmethod
    def open(cls, settings: HubSettings) -> Hub:
        """Open (creating on first use) the hub's data folder, key and tables."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.database_url or f"sqlite:///{(settings.data_dir / 'hub.db').absolute()}"
        engine = create_engine(url, connect_args={"timeout": 60} if url.startswith("sqlite") else {})
        create_tables(engine)
        key = load_or_create_hub_key(settings.data_dir)
        audit = AuditLog(engine)
        institutions = InstitutionService(engine, audit)
        operators: dict[str, PublicKey] = {}
        for path in settings.operator_keys:
            jwk = json.loads(Path(path).read_text())
            operators[jwk_thumbprint(jwk)] = public_key_from_jwk(jwk)
        return cls(settings, engine, key, audit, institutions, Registry(engine, institutions, audit), operators)

    def close(self) -> None:
        """Close the relay cache, if open, and release the database connections."""
        self.close_relay_cache()
        self.engine.dispose()

    def open_relay_cache(self) -> RelayCache | None:
        """Open the relay cache (``hub.relay_cache_max_bytes`` > 0) and drop entries no longer current."""
        if self.relay_cache is None and self.settings.relay_cache_max_bytes > 0:
            self.relay_cache = RelayCache.open(
                self.settings.data_dir / RELAY_CACHE_FOLDER,
                self.settings.relay_cache_max_bytes,
                is_current=self.registry.is_current,
                on_integrity_failure=self._relay_integrity_failed,
            )
            if self.relay_cache is not None:
                self.relay_cache.sweep()
        return self.relay_cache

    def close_relay_cache(self) -> None:
        """Finish the relay cache's pending work and close it."""
        if self.relay_cache is not None:
            cache, self.relay_cache = self.relay_cache, None
            cache.close()

    def _relay_integrity_failed(self, manifest: RegisteredManifest, report: IntegrityReport) -> None:
        self.audit.record(
            RelayIntegrityFailed(
                actor=HUB_SUBJECT,
                national_key=manifest.national_key,
                object=manifest.manifest_id,
                purpose="relay cache: the gateway's study against its signed manifest",
                detail=dict(report.counts()),
            )
        )

    def authenticate(self, authorization: str | None, method: str, path: str) -> Caller:
        """The caller an assertion proves (an admitted institution, or an operator)."""
        return verify_assertion(
            authorization,
            audience=self.settings.audience,
            method=method,
            path=path,
            lookup=self._caller_key,
            first_use=self._first_use,
        )

    def _caller_key(self, subject: str, kid: str) -> PublicKey:
        if subject == OPERATOR_SUBJECT:
            if kid not in self.operator_keys:
                raise KeyNotTrusted(f"key {kid} is not an operator key")
            return self.operator_keys[kid]
        return self.institutions.current_key(subject, kid).public_key

    def _first_use(self, jti: str, expires_at: int) -> bool:
        now = int(time.time())
        with self.engine.begin() as connection:
            connection.execute(delete(used_assertions).where(used_assertions.c.expires_at < _time(now)))
            try:
                connection.execute(insert(used_assertions).values(jti=jti, expires_at=_time(expires_at)))
            except IntegrityError:
                return False
        return True


def _time(epoch: int) -> str:
    return format_time(datetime.fromtimestamp(epoch, UTC))


def load_or_create_hub_key(data_dir: Path) -> SigningKey:
    """The hub's signing key, made on first start; its public JWK is written beside it."""
    pem, public = data_dir / "hub-key.pem", data_dir / "hub-key.jwk"
    if pem.exists():
        key = SigningKey.load(pem)
    else:
        key = SigningKey.generate()
        key.save(pem)
    if not public.exists():
        public.write_text(json.dumps(key.public_jwk(), indent=2) + "\n")
    return key
