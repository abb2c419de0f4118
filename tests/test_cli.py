"""The `clipwatch` command as a user runs it: exit codes, messages, `scan`, `db init`, `db status`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import structlog

from clipwatch.cli import main
from conftest import run_cli, write_image


@pytest.fixture
def env(tmp_path: Path, model_dir: Path, store_url: str, table: str) -> dict[str, str]:
    (tmp_path / "watched").mkdir()
    return {
        "CLIPWATCH_WATCH__PATHS": str(tmp_path / "watched"),
        "CLIPWATCH_MODEL__NAME": str(model_dir),
        "CLIPWATCH_MODEL__DEVICE": "cpu",
        "CLIPWATCH_STORE__URL": store_url,
        "CLIPWATCH_STORE__TABLE": table,
        "CLIPWATCH_METRICS__LISTEN": "",
        "CLIPWATCH_LOG__FORMAT": "json",
        "CLIPWATCH_DAEMON__DATA_DIR": str(tmp_path / "data"),
    }


@pytest.fixture
def run_here(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """`clipwatch ...` as run_cli runs it, but in this process: the same main(), arguments, environment,
    exit code and output, without starting Python and importing torch again (seconds per call, most of
    this file's time). The tests of what a process does at exit (`run`) keep run_cli."""
    def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            capsys.readouterr()
            try:
                code = main(list(args))
                out, err = capsys.readouterr()
            finally:
                structlog.reset_defaults()  # main pointed structlog at pytest's capture
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


def test_scan_ingests_once_and_reports_a_summary(run_here, env: dict[str, str], tmp_path: Path):
    root = tmp_path / "watched"
    for i in range(3):
        write_image(root / f"{i}.jpg", seed=i)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / ".hidden.jpg").write_bytes(b"ignored")
    (root / "notes.txt").write_text("not an image type")
    first = run_here("scan", env=env)
    assert first.returncode == 0, first.stderr
    assert "4 image files, 4 new or changed, 0 gone; embedded 3, unchanged 0, deleted 0, failed 1" in first.stdout
    (root / "0.jpg").unlink()
    second = run_here("scan", env=env)
    assert "3 image files, 1 new or changed, 1 gone; embedded 0, unchanged 0, deleted 1, failed 1" in second.stdout

    status = run_here("db", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["dimension"] == 512
    assert report["rows"] == [{"status": "ok", "model": "tiny-clip", "count": 2}]


def test_scan_stores_files_stamped_in_the_future_and_accounts_for_every_file(run_here, env: dict[str, str],
                                                                            tmp_path: Path):
    # A camera with a wrong clock, `cp -p` from an archive, a share with clock skew: mtimes ahead of now.
    root = tmp_path / "watched"
    ahead = time.time() + 86_400
    for i in range(3):
        os.utime(write_image(root / f"from-the-future-{i}.jpg", seed=i), (ahead, ahead))
    write_image(root / "just-written.jpg", seed=9)  # modified a moment ago: a one-shot scan takes it as it is
    (root / "broken.jpg").write_bytes(b"not an image")
    result = run_here("scan", env=env)
    assert result.returncode == 0, result.stderr
    assert "5 image files, 5 new or changed, 0 gone; embedded 4, unchanged 0, deleted 0, failed 1" in result.stdout
    status = json.loads(run_here("db", "status", "--json", env=env).stdout)
    assert status["rows"] == [{"status": "ok", "model": "tiny-clip", "count": 4}]


def test_db_init_creates_the_table_without_loading_the_model(run_here, env: dict[str, str]):
    env = {**env, "CLIPWATCH_MODEL__NAME": "/no/model/needed/here"}
    created = run_here("db", "init", "--dimension", "512", env=env)
    assert created.returncode == 0, created.stderr
    search = "the database's vector index" if env["CLIPWATCH_STORE__URL"].startswith("mariadb") else "in memory"
    assert f"created (vectors of dimension 512; similarity search: {search})" in created.stdout
    again = run_here("db", "init", "--dimension", "768", env=env)
    assert again.returncode == 1
    assert "holds 512-dimensional vectors" in again.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # the model fails, whatever the store
def test_a_model_that_cannot_load_exits_non_zero_with_one_clear_message(env: dict[str, str]):
    result = run_cli("run", env={**env, "CLIPWATCH_MODEL__NAME": "/opt/models/missing-clip"})
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("clipwatch: model.name = '/opt/models/missing-clip' could not be loaded")
    assert "there is no such directory. Point model.name (or CLIPWATCH_MODEL__NAME) at the directory" in message


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # the model fails, whatever the store
def test_a_hub_id_without_network_or_cache_fails_fast_and_says_so(env: dict[str, str], tmp_path: Path):
    # HF_HUB_OFFLINE is what an operator sets on an offline host; this machine has no hub either way.
    result = run_cli("run", env={**env, "CLIPWATCH_MODEL__NAME": "clip-ViT-B-32", "HF_HUB_OFFLINE": "1",
                                 "HF_HOME": str(tmp_path / "empty-cache")}, timeout=60)
    assert result.returncode == 1
    assert "is not a local directory and is not in the model cache" in result.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_configuration_errors_exit_2_and_name_the_key(env: dict[str, str]):
    result = run_cli("run", env={**env, "CLIPWATCH_MODEL__BATCH_SIZE": "lots"})
    assert result.returncode == 2
    assert "configuration error: model.batch_size: expected an integer, got 'lots'" in result.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_missing_watch_directory_is_named(env: dict[str, str], tmp_path: Path):
    result = run_cli("run", env={**env, "CLIPWATCH_WATCH__PATHS": str(tmp_path / "nope")})
    assert result.returncode == 2
    assert f"watch.paths: '{tmp_path / 'nope'}' is not an existing directory" in result.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_an_unreachable_database_is_reported_without_the_password(env: dict[str, str]):
    result = run_cli("db", "status", env={**env, "CLIPWATCH_STORE__URL": "mysql://clip:hunter2@127.0.0.1:1/clip"})
    assert result.returncode == 1
    assert "cannot connect to mysql://clip@127.0.0.1:1/clip" in result.stderr
    assert "hunter2" not in result.stderr


def test_every_command_has_useful_help():
    for args in (["--help"], ["run", "--help"], ["scan", "--help"], ["db", "init", "--help"],
                 ["db", "status", "--help"], ["verdicts", "--help"], ["dismiss", "--help"], ["confirm", "--help"],
                 ["hash", "--help"]):
        result = run_cli(*args, env={})
        assert result.returncode == 0 and len(result.stdout) > 200, args
    assert "--dimension" in run_cli("db", "init", "--help", env={}).stdout


@pytest.mark.mysql
@pytest.mark.parametrize("store_url", ["mysql", "mariadb"], indirect=True)
def test_the_documented_least_privilege_users_are_enough(store_url: str, env: dict[str, str], tmp_path: Path):
    from clipwatch.config import parse_store_url
    from clipwatch.store.mysql import MySQLStore

    admin_url = parse_store_url(store_url)
    kind = admin_url.scheme  # mysql or mariadb: each server has its own setup files
    admin = MySQLStore(admin_url, "", "unused", "test")

    def run_sql_file(name: str) -> None:
        sql = (Path(__file__).parent.parent / "config" / name).read_text()
        for statement in "\n".join(line for line in sql.splitlines() if not line.startswith("--")).split(";"):
            if statement.strip():
                admin._fetch(statement.replace("change-me", "t3st-pw"))

    user_env = {**env, "CLIPWATCH_STORE__URL": f"{kind}://clipwatch@{admin_url.host}:{admin_url.port}/clipwatch",
                "CLIPWATCH_STORE__PASSWORD": "t3st-pw", "CLIPWATCH_STORE__TABLE": "images"}
    try:
        admin._fetch("DROP DATABASE IF EXISTS clipwatch")
        admin._fetch("DROP USER IF EXISTS 'clipwatch'@'%'")
        run_sql_file(f"{kind}-setup.sql")  # database-wide grants, CREATE included: the daemon makes its tables
        write_image(tmp_path / "watched" / "a.jpg", seed=1)
        scan = run_cli("scan", env=user_env)
        assert scan.returncode == 0, scan.stderr
        assert "embedded 1" in scan.stdout

        run_sql_file(f"{kind}-strict-grants.sql")  # rows of its two tables only, nothing else
        write_image(tmp_path / "watched" / "b.jpg", seed=2)
        (tmp_path / "watched" / "a.jpg").unlink()
        scan = run_cli("scan", env=user_env)
        assert scan.returncode == 0, scan.stderr
        assert "embedded 1, unchanged 0, deleted 1" in scan.stdout
        denied = run_cli("db", "init", "--dimension", "512", env={**user_env, "CLIPWATCH_STORE__TABLE": "other"})
        assert denied.returncode == 1 and "CREATE command denied" in denied.stderr

        admin._fetch("ALTER TABLE clipwatch.images DROP COLUMN pdq_distance")  # a table made by a version before
        refused = run_cli("scan", env=user_env)  # without ALTER: refused, with the statement to run
        assert refused.returncode == 1 and "ALTER TABLE `images` ADD COLUMN `pdq_distance`" in refused.stderr
        as_admin = {**user_env, "CLIPWATCH_STORE__URL": f"{kind}://root@{admin_url.host}:{admin_url.port}/clipwatch",
                    "CLIPWATCH_STORE__PASSWORD": ""}
        assert run_cli("db", "init", "--dimension", "512", env=as_admin).returncode == 0
        scan = run_cli("scan", env=user_env)
        assert scan.returncode == 0, scan.stderr
    finally:
        admin._fetch("DROP DATABASE IF EXISTS clipwatch")
        admin._fetch("DROP USER IF EXISTS 'clipwatch'@'%'")
        admin.close()


def test_import_then_search_by_vector_ranks_by_cosine_like_numpy(run_here, env: dict[str, str], tmp_path: Path):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, 512))
    lines = [json.dumps({"path": f"/external/img {i}.jpg", "embedding": v.tolist()}) for i, v in enumerate(vectors)]
    lines.insert(5, '{"path": "/external/broken.jpg", "embedding": [1, 2, 3]}')
    lines.insert(9, "not json at all")
    lines.append(json.dumps({"path": "/external/nan.jpg", "embedding": [float("nan")] * 512}))
    source = tmp_path / "vectors.jsonl"
    source.write_text("\n".join(lines) + "\n")
    run_here("db", "init", "--dimension", "512", env=env)
    imported = run_here("import", str(source), env=env)
    assert imported.returncode == 1  # some lines were bad; the rest are in
    assert "import: 43 lines, 40 imported" in imported.stdout and "3 bad" in imported.stdout
    assert "line 6: \"embedding\": has 3 dimensions, the table holds 512" in imported.stderr
    assert "line 10: not valid JSON" in imported.stderr
    assert "line 43: \"embedding\": contains NaN or infinity" in imported.stderr

    query = rng.standard_normal(512)
    # Exact search on every store: MariaDB's vector index is approximate, and the 6th nearest of 40 random
    # rows to a random query is exactly what it may miss (seen once in CI). Its answers: test_dbindex.py.
    exact = {**env, "CLIPWATCH_INDEX__WHERE": "memory"}
    found = run_here("search", "--vector", json.dumps(query.tolist()), "--top", "7", "--json", env=exact)
    assert found.returncode == 0, found.stderr
    results = [json.loads(line) for line in found.stdout.splitlines()]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = unit @ (query / np.linalg.norm(query))
    best = np.argsort(-expected)[:7]
    assert [r["path"] for r in results] == [f"/external/img {i}.jpg" for i in best]
    assert np.allclose([r["similarity"] for r in results], expected[best], atol=1e-4)


def test_search_prints_a_table_best_first(run_here, env: dict[str, str], tmp_path: Path):
    root = tmp_path / "watched"
    for i in range(3):
        write_image(root / f"t{i}.jpg", seed=i)
    assert run_here("scan", env=env).returncode == 0
    found = run_here("search", str(root / "t1.jpg"), "--top", "2", env=env)
    assert found.returncode == 0, found.stderr
    lines = found.stdout.splitlines()
    assert lines[0].startswith("+-") and "| path" in lines[1] and "similarity |" in lines[1]
    assert lines[3].startswith(f"| {root / 't1.jpg'} ") and lines[3].endswith("|     1.0000 |")
    assert len(lines) == 6  # rule, header, rule, 2 rows, rule


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # compare never reads the store
def test_compare_matches_numpy(run_here, env: dict[str, str], tmp_path: Path):
    root = tmp_path / "watched"
    write_image(root / "t0.jpg", seed=0)
    a, b = [0.3, -1.2, 2.0], [1.5, 0.2, -0.7]
    for metric, expected in (("cosine", np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)),
                             ("dot", np.dot(a, b)), ("euclidean", np.linalg.norm(np.subtract(a, b)))):
        out = run_here("compare", json.dumps(a), json.dumps(b), "--metric", metric, env=env)
        assert out.returncode == 0, out.stderr
        assert abs(float(out.stdout) - expected) < 1e-5
    same = run_here("compare", str(root / "t0.jpg"), str(root / "t0.jpg"), env=env)
    assert abs(float(same.stdout) - 1.0) < 1e-5
