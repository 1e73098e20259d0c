"""Configuration: defaults, TOML loading, env overrides, errors that name the key."""

import pytest

from kaizenlm import config
from kaizenlm.cli import main


def test_defaults_and_duckdb_path(tmp_path):
    cfg = config.load(env={"KAIZEN_HOME": str(tmp_path)})
    assert cfg.kafka.bootstrap == "embedded"
    assert cfg.duckdb_path == tmp_path / "kaizen.duckdb"
    assert cfg.kafka.servers == ["127.0.0.1:19092"]


def test_env_overrides_every_documented_variable(tmp_path):
    env = {"KAIZEN_HOME": str(tmp_path), "KAIZEN_KAFKA_BOOTSTRAP": "k1:9092,k2:9093", "KAIZEN_BROKER_PORT": "19999",
           "KAIZEN_GATEWAY_PORT": "8500", "KAIZEN_CONTROLLER_PORT": "8501", "KAIZEN_INGEST_KEY": "ingest-key-1",
           "KAIZEN_ADMIN_KEY": "admin-key-1"}
    cfg = config.load(env=env)
    assert cfg.kafka.servers == ["k1:9092", "k2:9093"]
    assert (cfg.kafka.broker_port, cfg.gateway.port, cfg.controller.port) == (19999, 8500, 8501)
    assert (cfg.auth.ingest_key, cfg.auth.admin_key) == ("ingest-key-1", "admin-key-1")


@pytest.mark.parametrize("raw, key, problem", [
    ({"gateway": {"port": 70000}}, "gateway.port", "TCP port"),
    ({"gateway": {"port": "eighty"}}, "gateway.port", "integer"),
    ({"gateway": {"prot": 1}}, "gateway.prot", "unknown key"),
    ({"kafka": {"bootstrap": "nohostport"}}, "kafka.bootstrap", "host:port"),
    ({"auth": {"ingest_key": "short"}}, "auth.ingest_key", "at least 8"),
    ({"nosuch": {}}, "nosuch", "unknown section"),
])
def test_errors_name_the_key(raw, key, problem):
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(raw)
    assert f"'{key}'" in str(e.value) and problem in str(e.value)


def test_init_writes_commented_default_that_loads(tmp_path, capsys):
    path = tmp_path / "kaizen.toml"
    assert main(["init", "--path", str(path)]) == 0
    text = path.read_text()
    assert "# Port of the gateway" in text and "[gateway]" in text
    cfg = config.load(path, env={})
    assert cfg.gateway.port == config.GatewayConfig().port
    assert main(["init", "--path", str(path)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err


def test_bad_toml_file_exits_2(tmp_path, capsys, monkeypatch):
    path = tmp_path / "bad.toml"
    path.write_text("[gateway]\nport = 'x'\n")
    assert main(["--config", str(path), "stats"]) == 2
    assert "gateway.port" in capsys.readouterr().err


def test_every_command_has_help_with_example(capsys):
    from kaizenlm.cli import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "Example" in out and "kaizen" in out, name
