"""``normsearch token``: bootstrap a token in the database; it authenticates against the API."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.main import app
from service import auth
from service.db import make_engine, make_session_factory

runner = CliRunner()


def test_token_create_list_revoke(sqlite_url):
    created = runner.invoke(app, ["token", "create", "--user", "alice", "--url", sqlite_url])
    assert created.exit_code == 0, created.output
    raw = created.output.strip()
    assert raw.startswith("ns_")
    engine = make_engine(sqlite_url)
    with make_session_factory(engine)() as session:
        assert auth.authenticate(session, raw).name == "alice"
    listed = runner.invoke(app, ["token", "list", "--user", "alice", "--url", sqlite_url])
    assert listed.exit_code == 0 and raw[:8] in listed.output and raw not in listed.output
    token_id = listed.output.split("\t")[0]
    revoked = runner.invoke(
        app, ["token", "revoke", token_id, "--user", "alice", "--url", sqlite_url]
    )
    assert revoked.exit_code == 0
    with make_session_factory(engine)() as session:
        assert auth.authenticate(session, raw) is None
    engine.dispose()


def test_token_commands_explain_problems(sqlite_url, tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    result = runner.invoke(app, ["token", "create", "--user", "alice", "--url", empty])
    assert result.exit_code == 2 and "normsearch db upgrade" in result.output
    assert "Traceback" not in result.output
    missing = runner.invoke(app, ["token", "revoke", "7", "--user", "nobody", "--url", sqlite_url])
    assert missing.exit_code == 2 and "no user named 'nobody'" in missing.output


def test_token_create_finds_the_runs_dirs_database_as_up_does(tmp_path, monkeypatch):
    from cli.embedded import embedded_config, prepare_database
    from service.settings import Settings, get_settings

    runs = tmp_path / "runs"
    monkeypatch.setenv("NORMSEARCH_RUNS_DIR", str(runs))
    monkeypatch.delenv("NORMSEARCH_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path / "..")  # not where a relative runs/ would be
    get_settings.cache_clear()
    try:
        missing = runner.invoke(app, ["token", "create", "--user", "alice"])
        assert missing.exit_code == 2 and "Traceback" not in missing.output
        (line,) = missing.output.strip().splitlines()
        assert line.startswith(f"error: no database at {runs.resolve() / 'normsearch.db'} ")
        assert not runs.exists()  # nothing was created by looking
        config = embedded_config(Settings())  # what `normsearch up` opens
        prepare_database(config.database_url)
        created = runner.invoke(app, ["token", "create", "--user", "alice"])
    finally:
        get_settings.cache_clear()
    assert created.exit_code == 0, created.output
    engine = make_engine(config.database_url)
    with make_session_factory(engine)() as session:
        assert auth.authenticate(session, created.output.strip()).name == "alice"
    engine.dispose()


def test_an_unreachable_database_is_one_line(tmp_path):
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    result = runner.invoke(app, ["token", "create", "--user", "alice", "--url", url])
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: cannot open the database postgresql+psycopg://nobody@")


def test_token_create_admin_sets_and_clears_the_flag(sqlite_url):
    from sqlalchemy import select

    from service.db.models import User

    def is_admin(name: str) -> bool:
        engine = make_engine(sqlite_url)
        try:
            with make_session_factory(engine)() as session:
                return session.scalars(select(User).where(User.name == name)).one().is_admin
        finally:
            engine.dispose()

    def create(*flags: str):
        result = runner.invoke(
            app, ["token", "create", "--user", "root", *flags, "--url", sqlite_url]
        )
        assert result.exit_code == 0, result.output
        assert result.stdout.strip().startswith("ns_")  # stdout: the token alone
        return result

    create()
    assert not is_admin("root")  # a new user is plain
    made = create("--admin")
    assert is_admin("root") and "root is an admin" in made.stderr
    create()
    assert is_admin("root")  # unset: the user stays as they are
    create("--no-admin")
    assert not is_admin("root")
