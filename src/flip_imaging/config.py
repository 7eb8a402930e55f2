"""One place for configuration: environment variables ``FLIP_IMAGING_*``, an optional TOML file, defaults.

Everything has an embedded default so that ``flip-imaging serve`` works on a bare machine: an SQLite
database and the archive folder live under the data directory.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

ENV_PREFIX = "FLIP_IMAGING_"


@dataclass
class Settings:
    """Runtime settings. Field names match the env vars without prefix (``FLIP_IMAGING_DATA_DIR``)."""

    data_dir: Path = field(default_factory=lambda: Path("./flip-data"))
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8080
    site_url: str = ""
    admin_password: str = ""
    #: seconds a received study may stay quiet before its session is archived
    session_quiet_seconds: float = 10.0
    #: default DICOM receiver created on first start (AE title and port); port 0 disables it
    dicom_ae_title: str = "FLIP"
    dicom_port: int = 8104
    #: secret mixed into FLIP's per-subject date shift; empty: generated once into
    #: ``<data_dir>/date-shift-secret.txt`` (owner-only). Changing it changes every later shift.
    date_shift_secret: str = ""
    #: processes that de-identify received files; 0 means one per CPU (1 runs it in the worker thread)
    deid_processes: int = 0
    container_workers: int = 2
    container_time_limit_seconds: int = 3600
    max_upload_bytes: int = 20 * 1024**3
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    mail_from: str = "flip-imaging@localhost"

    @property
    def archive_root(self) -> Path:
        return self.data_dir / "archive"

    @property
    def spool_dir(self) -> Path:
        """Private spool for raw received bytes: owner-only, never served."""
        return self.data_dir / "spool"

    @property
    def scratch_dir(self) -> Path:
        return self.data_dir / "scratch"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'flip-imaging.db').resolve()}"

    @property
    def effective_site_url(self) -> str:
        return self.site_url or f"http://{self.host}:{self.port}"

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: object) -> Settings:
        """Defaults, then the TOML file, then ``FLIP_IMAGING_*`` env vars, then explicit overrides."""
        values: dict[str, object] = {}
        path = config_file or (Path(os.environ[ENV_PREFIX + "CONFIG"]) if ENV_PREFIX + "CONFIG" in os.environ
                               else None)
        if path is not None:
            with open(path, "rb") as fh:
                values.update(tomllib.load(fh))
        for f in fields(cls):
            env = os.environ.get(ENV_PREFIX + f.name.upper())
            if env is not None:
                values[f.name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name: f for f in fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        settings = cls()
        for name, raw in values.items():
            default = getattr(settings, name)
            setattr(settings, name, _coerce(raw, default))
        return settings


def _coerce(raw: object, default: object) -> object:
    if isinstance(default, bool):
        return raw if isinstance(raw, bool) else str(raw).lower() in {"1", "true", "yes", "on"}
    if isinstance(default, int):
        return int(raw)  # type: ignore[arg-type]
    if isinstance(default, float):
        return float(raw)  # type: ignore[arg-type]
    if isinstance(default, Path):
        return Path(str(raw))
    return raw
