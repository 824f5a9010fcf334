"""The hub as one object: its database, its key, and its services.

``Hub.open(settings)`` creates the data folder, the hub's signing key on first start (the
operator pins its public half, ``hub-key.jwk``, at every gateway and verifier) and the tables.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, delete, insert
from sqlalchemy.exc import IntegrityError

from pixport.config import HubSettings
from pixport.errors import KeyNotTrusted
from pixport.hub.audit import AuditLog, create_tables
from pixport.hub.institutions import InstitutionService
from pixport.hub.registry import Registry
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
        """Release the database connections."""
        self.engine.dispose()

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
