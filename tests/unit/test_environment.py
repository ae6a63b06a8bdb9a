"""The configuration table (myauth/environment.py) and .env (stackctl/envfile.py): generation,
validation and the documented example."""

import environment
import pytest
import yaml

from stackctl import envfile
from stackctl.stack import ROOT


def generated(tmp_path, name=".env"):
    path = tmp_path / name
    assert envfile.main(["generate", str(path)]) == 0
    return path


def test_a_generated_env_file_is_valid_private_and_has_fresh_secrets(tmp_path):
    first, second = generated(tmp_path, "first.env"), generated(tmp_path, "second.env")
    assert first.stat().st_mode & 0o077 == 0
    a, b = envfile.read_env_file(first), envfile.read_env_file(second)
    envfile.check_env_file(first)
    for name in ("SECRET_KEY", "MARIADB_ROOT_PASSWORD", "MARIADB_PASSWORD", "REDIS_PASSWORD"):
        assert len(a[name]) >= 50 and a[name] != b[name]
    assert len({a["SECRET_KEY"], a["MARIADB_PASSWORD"], a["REDIS_PASSWORD"]}) == 3


def test_generate_never_overwrites_an_existing_env_file(tmp_path):
    path = generated(tmp_path)
    before = path.read_text()
    assert envfile.main(["generate", str(path)]) == 1
    assert path.read_text() == before


@pytest.mark.parametrize("name, value, message", [
    ("SECRET_KEY", "", "SECRET_KEY is missing"),
    ("SECRET_KEY", "short", "SECRET_KEY must be at least 32 characters"),
    ("SECRET_KEY", "wow I'm a really bad default secret key", "SECRET_KEY may contain only"),  # Alliance Auth's
    ("MARIADB_PASSWORD", "changeme" * 5, "MARIADB_PASSWORD looks like a placeholder"),
    ("REDIS_PASSWORD", "x" * 40 + "'; DROP", "REDIS_PASSWORD may contain only"),
    ("SITE_URL", "auth.example.com", "SITE_URL must be an http(s) URL"),
    ("SITE_URL", "https://auth.example.com/", "SITE_URL must have no path and no trailing slash"),
    ("WEB_PORT", "80000", "WEB_PORT must be a whole number from 1 to 65535"),
    ("WEB_BIND_ADDRESS", "localhost", "WEB_BIND_ADDRESS must be an IP address"),
    ("MARIADB_USER", "user-name", "MARIADB_USER must be a letter followed by"),
    ("EMAIL_USE_TLS", "maybe", "EMAIL_USE_TLS must be true or false"),
    ("ESI_USER_CONTACT_EMAIL", "nobody", "ESI_USER_CONTACT_EMAIL must be an e-mail address"),
])
def test_each_bad_value_is_reported_with_its_name(tmp_path, capsys, name, value, message):
    path = generated(tmp_path)
    lines = [line for line in path.read_text().splitlines() if not line.startswith(f"{name}=")]
    path.write_text("\n".join(lines + [f"{name}={value}"]) + "\n")
    assert envfile.main(["check", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / ".env"
    path.write_text("SITE_URL=nope\n")
    with pytest.raises(environment.ConfigurationError) as error:
        envfile.check_env_file(str(path))
    for name in ("SECRET_KEY", "MARIADB_ROOT_PASSWORD", "MARIADB_PASSWORD", "REDIS_PASSWORD", "SITE_URL"):
        assert name in str(error.value)


def test_unknown_variables_and_malformed_lines_are_rejected(tmp_path):
    path = generated(tmp_path)
    path.write_text(path.read_text() + "SECRETKEY=typo\n")
    with pytest.raises(environment.ConfigurationError, match="unknown variables: SECRETKEY"):
        envfile.check_env_file(str(path))
    path.write_text("just some words\n")
    with pytest.raises(environment.ConfigurationError, match="line 1 is not NAME=value"):
        envfile.check_env_file(str(path))


@pytest.mark.parametrize("value, size", [("512MB", 512 * 1024**2), ("1GB", 1024**3), ("256KB", 256 * 1024)])
def test_memory_sizes_use_memmons_units(value, size):
    assert environment.validate({"WORKER_MEMORY_LIMIT": value}, ["WORKER_MEMORY_LIMIT"]) == {"WORKER_MEMORY_LIMIT": size}


@pytest.mark.parametrize("value", ["512M", "512", "0MB", "1.5GB"])
def test_memory_sizes_memmon_would_misread_are_rejected(value):
    with pytest.raises(environment.ConfigurationError, match="WORKER_MEMORY_LIMIT"):
        environment.validate({"WORKER_MEMORY_LIMIT": value}, ["WORKER_MEMORY_LIMIT"])


def test_compose_passes_the_app_containers_every_operator_variable_they_read_and_no_unknown_one():
    passed = yaml.safe_load((ROOT / "compose.yaml").read_text())["x-app"]["environment"]
    from_env_file = {name for name, value in passed.items() if value.startswith(f"${{{name}:")}
    assert from_env_file == {v.name for v in environment.VARIABLES if v.in_env_file and v.in_app}
    assert set(passed) <= set(environment.BY_NAME)


def test_env_example_documents_every_operator_variable_and_holds_no_secret():
    example = (ROOT / ".env.example").read_text()
    assert example == envfile.example_env_file(), "regenerate: scripts/internal/stackctl envfile example > .env.example"
    values = envfile.read_env_file(str(ROOT / ".env.example"))
    for variable in environment.VARIABLES:
        if variable.generate:
            assert values[variable.name] == ""


@pytest.mark.parametrize("site_url, bind, port, url", [
    ("http://localhost:8000", "127.0.0.1", "8000", "http://localhost:8000"),  # the default
    ("http://localhost", "127.0.0.1", "8123", "http://localhost:8123"),
    ("https://127.0.0.1", "127.0.0.1", "9000", "http://127.0.0.1:9000"),
    ("http://[::1]:8000", "127.0.0.1", "8000", "http://[::1]:8000"),
    ("http://192.0.2.7", "192.0.2.7", "8000", "http://192.0.2.7:8000"),
    ("https://auth.example.com", "127.0.0.1", "8000", "https://auth.example.com"),  # through the reverse proxy
])
def test_the_url_scripts_up_prints_is_one_django_answers_for(site_url, bind, port, url):
    # ALLOWED_HOSTS is the SITE_URL's host only: the URL must carry that host (issue 14).
    assert envfile.site_answers_at({"SITE_URL": site_url, "WEB_BIND_ADDRESS": bind, "WEB_PORT": port}) == url


def test_a_container_checks_its_environment_and_reads_a_switch(monkeypatch, capsys):
    # The image's entrypoint: `environment.py check`, then `environment.py true WAIT_FOR_SCHEMA`.
    monkeypatch.setenv("WAIT_FOR_SCHEMA", "true")
    assert environment.main(["check"]) == 0 and environment.main(["true", "WAIT_FOR_SCHEMA"]) == 0
    monkeypatch.setenv("WAIT_FOR_SCHEMA", "false")
    assert environment.main(["true", "WAIT_FOR_SCHEMA"]) == 1
    monkeypatch.setenv("WORKER_CONCURRENCY", "ten")
    assert environment.main(["check"]) == 1
    assert "WORKER_CONCURRENCY='ten' is not valid" in capsys.readouterr().err
