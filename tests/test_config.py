"""Configuration: TOML plus environment, validated at start, errors that name the key, no leaked password."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from clipwatch.config import Config, ConfigError
from clipwatch.config_loader import SECTIONS, load_config
from clipwatch.vocab import Action, Signal

EXAMPLE = Path(__file__).parent.parent / "config" / "clipwatch.example.toml"


def test_the_example_file_is_valid_and_documents_every_key():
    config = load_config(EXAMPLE, env={})
    text = EXAMPLE.read_text()
    for section in SECTIONS:
        body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
        for key in getattr(config, section).__dataclass_fields__:
            assert f"\n{key} =" in "\n" + body or f"\n# {key} =" in "\n" + body, f"{section}.{key} is not documented"


def test_environment_overrides_the_file(tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text('[model]\nbatch_size = 8\nname = "from-file"\n[watch]\npaths = ["/srv/a"]\n')
    config = load_config(file, env={"CLIPWATCH_MODEL__BATCH_SIZE": "64",
                                    "CLIPWATCH_WATCH__PATHS": '["/srv/b", "/srv/c"]',
                                    "CLIPWATCH_WATCH__POLLING": "true",
                                    "CLIPWATCH_WATCH__IGNORE": ".*,*.tmp"})
    assert config.model.batch_size == 64 and config.model.name == "from-file"
    assert config.watch.paths == ("/srv/b", "/srv/c")
    assert config.watch.polling is True
    assert config.watch.ignore == (".*", "*.tmp")


def test_clipwatch_config_variable_names_the_file(tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text('[store]\ntable = "pictures"\n')
    assert load_config(None, env={"CLIPWATCH_CONFIG": str(file)}).store.table == "pictures"


@pytest.mark.parametrize(("toml", "env", "message"), [
    ("[model]\nbatch_size = 0\n", {}, "model.batch_size: expected an integer >= 1, got 0"),
    ("[model]\nbatch_size = 'many'\n", {}, "model.batch_size: expected an integer, got 'many'"),
    ("", {"CLIPWATCH_MODEL__DEVICE": "tpu"}, "model.device: expected one of 'auto', 'cpu', 'cuda', got 'tpu'"),
    ("[watch]\npolling = 'sometimes'\n", {}, "watch.polling: expected true or false"),
    ("[watch]\nsettle = 5\n", {}, "watch.settle: unknown key"),
    ("[wacth]\n", {}, "unknown section [wacth]"),
    ("[store]\ntable = 'images; DROP TABLE x'\n", {}, "store.table: expected a plain SQL identifier"),
    ("[store]\nurl = 'postgres://u@h/db'\n", {}, "store.url: expected mysql://"),
    ("[store]\nurl = 'mysql://host/db'\n", {}, "store.url: expected mysql://USER@HOST:PORT/DB"),
    ("[store]\non_delete = 'archive'\n", {}, "store.on_delete: expected one of 'delete', 'keep'"),
    ("[metrics]\nlisten = 'everywhere'\n", {}, "metrics.listen: expected HOST:PORT"),
    ("[model\n", {}, "not valid TOML"),
    ("", {"CLIPWATCH_WATCH__PATH": "/srv"}, "CLIPWATCH_WATCH__PATH: no key watch.path; known keys: extensions"),
    ("", {"CLIPWATCH_STOR__URL": "mysql://u@h:1/d"}, "CLIPWATCH_STOR__URL: no section 'stor'"),
    ("", {"CLIPWATCH_STORE__INSTANCE": "x" * 256}, "store.instance: expected a name of at most 255 characters"),
])
def test_invalid_values_are_refused_naming_the_key(tmp_path: Path, toml: str, env: dict[str, str], message: str):
    file = tmp_path / "c.toml"
    file.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(file, env=env)
    assert message in str(info.value)


def test_password_never_shows_in_repr_or_errors(tmp_path: Path):
    config = load_config(None, env={"CLIPWATCH_STORE__URL": "mysql://clip:s3cr3t-url@db:3306/clip",
                                    "CLIPWATCH_STORE__PASSWORD": "s3cr3t-env"})
    assert "s3cr3t" not in repr(config)
    assert config.store_url.redacted() == "mysql://clip@db:3306/clip"
    assert config.store_password == "s3cr3t-env"  # the variable wins over the URL
    with pytest.raises(ConfigError) as info:
        load_config(None, env={"CLIPWATCH_STORE__URL": "mysqlx://clip:s3cr3t@db/clip"})
    assert "s3cr3t" not in str(info.value) and "***" in str(info.value)


def test_password_file_is_read_and_a_missing_one_is_named(tmp_path: Path):
    secret = tmp_path / "db-password"
    secret.write_text("from-file\n")
    config = load_config(None, env={"CLIPWATCH_STORE__URL": "mysql://clip@db/clip",
                                    "CLIPWATCH_STORE__PASSWORD_FILE": str(secret)})
    assert config.store_password == "from-file"
    missing = load_config(None, env={"CLIPWATCH_STORE__URL": "mysql://clip@db/clip",
                                     "CLIPWATCH_STORE__PASSWORD_FILE": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="store.password_file: cannot read it"):
        missing.store_password  # noqa: B018


def test_no_store_url_means_sqlite_under_the_data_dir(tmp_path: Path):
    config = load_config(None, env={"CLIPWATCH_DAEMON__DATA_DIR": str(tmp_path)})
    assert config.store_url.scheme == "sqlite"
    assert config.store_url.path == str(tmp_path / "clipwatch.sqlite3")


def test_mysql_url_parts_are_decoded(tmp_path: Path):
    url = load_config(None, env={"CLIPWATCH_STORE__URL": "mysql://clip%40app:p%40ss@db.local:3307/images_db"}).store_url
    assert (url.user, url.password, url.host, url.port, url.database) == (
        "clip@app", "p@ss", "db.local", 3307, "images_db")
    sock = load_config(None, env={"CLIPWATCH_STORE__URL": "mysql://clip@/db?unix_socket=/run/mysqld/mysqld.sock"})
    assert sock.store_url.path == "/run/mysqld/mysqld.sock"


@pytest.mark.parametrize("where", ["inside an incoming directory", "holding one", "holding the quarantine"])
def test_a_publish_directory_that_would_mix_incoming_or_private_files_is_refused_at_start(
        make_config: Callable[..., Config], tmp_path: Path, where: str):
    publish = {"inside an incoming directory": tmp_path / "watched" / "public", "holding one": tmp_path,
               "holding the quarantine": tmp_path / "public"}[where]
    with pytest.raises(ConfigError, match="publish_dir"):
        make_config(watch__publish_dir=str(publish), quarantine__dir=str(tmp_path / "public" / "q"))


def test_actions_per_signal_are_read_and_checked(tmp_path: Path):
    config = load_config(None, env={"CLIPWATCH_DUPLICATES__ACTIONS": '{pdq = "quarantine", sha256 = "reject"}'})
    assert config.duplicates.action_for(Signal.PDQ) == Action.QUARANTINE
    assert config.duplicates.action_for(Signal.SHA256) == Action.REJECT
    assert config.duplicates.action_for(Signal.CLIP) == config.duplicates.action == Action.FLAG
    with pytest.raises(ConfigError, match="duplicates.actions.phash: expected one of 'sha256', 'md5', 'pdq', 'clip'"):
        load_config(None, env={"CLIPWATCH_DUPLICATES__ACTIONS": '{phash = "flag"}'})
    with pytest.raises(ConfigError, match="duplicates.actions.md5: duplicates are found by sha256, pdq and clip"):
        load_config(None, env={"CLIPWATCH_DUPLICATES__ACTIONS": '{md5 = "flag"}'})
    prohibited = load_config(None, env={"CLIPWATCH_PROHIBITED__ACTIONS": '{clip = "flag", md5 = "reject"}'}).prohibited
    assert prohibited.action_for(Signal.CLIP) == Action.FLAG and prohibited.action_for(Signal.MD5) == Action.REJECT
    assert prohibited.action_for(Signal.PDQ) == prohibited.action == Action.QUARANTINE
    with pytest.raises(ConfigError, match="prohibited.actions.pdq: expected one of 'flag', 'quarantine', 'reject'"):
        load_config(None, env={"CLIPWATCH_PROHIBITED__ACTIONS": '{pdq = "publish"}'})
    with pytest.raises(ConfigError, match="prohibited.bank_distance: expected an integer from 0 to 256"):
        load_config(None, env={"CLIPWATCH_PROHIBITED__BANK_DISTANCE": "-1"})
    with pytest.raises(ConfigError, match="prohibited.bank_dir: .* is inside the watched directory"):
        load_config(None, env={"CLIPWATCH_WATCH__PATHS": f'["{tmp_path}"]',
                               "CLIPWATCH_PROHIBITED__BANK_DIR": str(tmp_path / "banks")})
    with pytest.raises(ConfigError, match="duplicates.actions.pdq: expected one of 'flag', 'quarantine', 'reject'"):
        load_config(None, env={"CLIPWATCH_DUPLICATES__ACTIONS": '{pdq = "publish"}'})
    with pytest.raises(ConfigError, match="duplicates.pdq_distance: expected an integer from -1 to 256"):
        load_config(None, env={"CLIPWATCH_DUPLICATES__PDQ_DISTANCE": "300"})
