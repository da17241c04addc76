"""Settings: defaults, TOML file, DICOMHUB_* environment and flags, in that priority."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomhub.cli import build_parser
from dicomhub.config import DuplicatePolicy, Settings, load_settings


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.http_port, s.data_dir) == ("127.0.0.1", 8000, Path("./var"))
    assert s.duplicate_policy == DuplicatePolicy.REJECT
    assert s.effective_database_url.startswith("sqlite:///")
    assert s.effective_database_url.endswith("var/index.sqlite3")


def test_priority_flag_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "dicomhub.toml"
    cfg.write_text(
        '[dicomhub]\nhttp_port = 7000\nhost = "0.0.0.0"\nduplicate_policy = "overwrite"\n'
    )
    assert load_settings(cfg).http_port == 7000
    monkeypatch.setenv("DICOMHUB_HTTP_PORT", "7100")
    s = load_settings(cfg)
    assert (s.http_port, s.host, s.duplicate_policy) == (7100, "0.0.0.0", "overwrite")
    assert load_settings(cfg, http_port=7200).http_port == 7200
    monkeypatch.setenv("DICOMHUB_CONFIG", str(cfg))
    assert load_settings().host == "0.0.0.0"


def test_invalid_setting_is_rejected(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('duplicate_policy = "sometimes"\n')
    with pytest.raises(ValueError, match="duplicate_policy"):
        load_settings(cfg)


def test_serve_flags_parse() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--data-dir",
            "/tmp/x",
            "--host",
            "::1",
            "--http-port",
            "9000",
            "--database-url",
            "postgresql+psycopg://u@h/db",
        ]
    )
    assert (args.data_dir, args.host, args.http_port) == (Path("/tmp/x"), "::1", 9000)
    assert args.database_url == "postgresql+psycopg://u@h/db"
