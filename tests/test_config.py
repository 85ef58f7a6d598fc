"""Tests for bot/config.py: loading, interpolation, validation messages, secrecy of tokens."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_type_hints

import pytest
import yaml

import bot.config
from bot.config import (
    AUTO_BATCH,
    DEFAULT_MODELS,
    AdminSettings,
    ConfigError,
    DiscordSettings,
    EngineSettings,
    LimitSettings,
    Settings,
    StorageSettings,
    TelegramSettings,
    default_config_path,
    load_settings,
    split_host_port,
)

REPO_ROOT = Path(bot.config.__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "config.yaml"
SECRET = "123456:SECRET-token-value"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), env=env or {})


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    return str(caught.value)


def defaults_in(folder: Path) -> Settings:
    storage = StorageSettings(db=folder / "data/canvas.db", images=folder / "data/images")
    return Settings(
        engine=EngineSettings(),
        storage=storage,
        discord=DiscordSettings(),
        telegram=TelegramSettings(),
        admins=AdminSettings(),
        limits=LimitSettings(),
    )


# --- defaults -------------------------------------------------------------------------------


def test_dataclass_defaults_are_the_documented_ones() -> None:
    assert EngineSettings() == EngineSettings(
        model="shapes", models=DEFAULT_MODELS, device="auto", max_batch=AUTO_BATCH,
        dtype="auto", compile=False, memory=0.0
    )
    assert {name: m.source for name, m in DEFAULT_MODELS.items()} == {
        "shapes": "bundled:shapes", "shapes-sd3": "bundled:shapes-sd3"}
    assert StorageSettings() == StorageSettings(Path("data/canvas.db"), Path("data/images"))
    assert LimitSettings() == LimitSettings(3, 100, 1000, 10_000_000, 16_777_216, (), False)
    assert Settings().log_level == "INFO"
    assert AdminSettings().discord == frozenset()
    telegram = TelegramSettings()
    assert (telegram.webhook_url, telegram.webhook_listen, telegram.webhook_secret) == (
        "", "0.0.0.0:8443", ""
    )


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "# nothing but a comment\n") == defaults_in(tmp_path)


def test_empty_sections_and_null_values_keep_defaults(tmp_path: Path) -> None:
    text = "engine:\ntelegram:\n  token:\nlimits: {}\n"
    assert load(tmp_path, text) == defaults_in(tmp_path)


def test_no_path_and_no_config_anywhere_gives_defaults(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bot.config, "default_config_path", lambda: tmp_path / "absent.yaml")
    assert load_settings(env={}) == defaults_in(tmp_path)


def test_default_config_path_prefers_current_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_config_path() == SHIPPED
    write(tmp_path, "engine:\n  device: cpu\n")
    assert default_config_path() == tmp_path / "config.yaml"
    assert load_settings(env={}).engine.device == "cpu"


# --- the shipped config.yaml ----------------------------------------------------------------


def test_shipped_config_loads_with_empty_env_and_equals_defaults() -> None:
    assert load_settings(SHIPPED, env={}) == defaults_in(REPO_ROOT)


def test_shipped_config_lists_every_setting() -> None:
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    for name, kind in get_type_hints(Settings).items():
        if dataclasses.is_dataclass(kind):
            assert list(data[name]) == [f.name for f in dataclasses.fields(kind)], name
        else:
            assert name in data


def test_shipped_config_takes_tokens_from_environment() -> None:
    env = {"TELEGRAM_TOKEN": "tg-token", "DISCORD_TOKEN": "dc-token",
           "TELEGRAM_WEBHOOK_SECRET": "hook-secret_1"}
    settings = load_settings(SHIPPED, env=env)
    assert settings.telegram.token == "tg-token"
    assert settings.telegram.webhook_secret == "hook-secret_1"
    assert settings.discord.token == "dc-token"


# --- interpolation --------------------------------------------------------------------------


def test_variable_is_taken_from_env(tmp_path: Path) -> None:
    settings = load(tmp_path, "engine:\n  model: ${MODEL}\n", {"MODEL": "my/model"})
    assert settings.engine.model == "my/model"


@pytest.mark.parametrize("env", [{}, {"DEVICE": ""}])
def test_default_is_used_when_variable_unset_or_empty(tmp_path, env) -> None:
    assert load(tmp_path, "engine:\n  device: ${DEVICE:-cpu}\n", env).engine.device == "cpu"


def test_default_is_ignored_when_variable_set(tmp_path: Path) -> None:
    text = "engine:\n  device: ${DEVICE:-cpu}\n"
    assert load(tmp_path, text, {"DEVICE": "cuda"}).engine.device == "cuda"


def test_variables_interpolate_inside_strings(tmp_path: Path) -> None:
    text = "storage:\n  images: ${HOME}/x/${SUB:-pics}\n"
    assert load(tmp_path, text, {"HOME": "/home/ann"}).storage.images == Path("/home/ann/x/pics")


def test_strings_from_env_convert_to_field_types(tmp_path: Path) -> None:
    text = (
        "engine:\n  max_batch: ${BATCH}\n  compile: ${COMPILE}\n"
        "discord:\n  guild_ids: ${GUILDS}\n"
        "admins:\n  telegram: ${ADMINS}\n"
    )
    env = {"BATCH": "8", "COMPILE": "yes", "GUILDS": "11, 22", "ADMINS": "5,6"}
    settings = load(tmp_path, text, env)
    assert settings.engine.max_batch == 8
    assert settings.engine.compile is True
    assert settings.discord.guild_ids == (11, 22)
    assert settings.admins.telegram == frozenset({"5", "6"})


@pytest.mark.parametrize("written", ["auto", "AUTO", " auto ", "${BATCH:-auto}"])
def test_max_batch_auto_means_sized_by_the_engine(tmp_path: Path, written: str) -> None:
    assert load(tmp_path, f"engine:\n  max_batch: '{written}'\n", {}).engine.max_batch == AUTO_BATCH


@pytest.mark.parametrize(
    ("word", "expected"), [("yes", True), ("no", False), ("true", True), ("False", False)]
)
def test_bool_words(tmp_path: Path, word: str, expected: bool) -> None:
    assert load(tmp_path, f"engine:\n  compile: '{word}'\n").engine.compile is expected


def test_admin_priority_is_off_unless_set(tmp_path: Path) -> None:
    assert load(tmp_path, "limits: {}\n").limits.admin_priority is False
    assert load(tmp_path, "limits:\n  admin_priority: true\n").limits.admin_priority is True


def test_unset_variable_is_refused_naming_key_and_variable(tmp_path: Path) -> None:
    assert error(tmp_path, "engine:\n  model: ${MODEL}\n") == (
        "engine.model: environment variable MODEL is not set (write ${MODEL:-} to make it optional)"
    )


def test_malformed_reference_is_refused(tmp_path: Path) -> None:
    assert error(tmp_path, "engine:\n  model: ${MY MODEL}\n") == (
        "engine.model: bad variable reference '${MY MODEL}' (write ${NAME} or ${NAME:-default})"
    )


# --- values converted and normalised --------------------------------------------------------


def test_yaml_ints_become_admin_id_strings(tmp_path: Path) -> None:
    text = "admins:\n  discord: [123456789012345678, '42']\n"
    assert load(tmp_path, text).admins.discord == frozenset({"123456789012345678", "42"})


def test_base_urls_lose_trailing_slash(tmp_path: Path) -> None:
    text = (
        "telegram:\n  api_base_url: http://127.0.0.1:8081/\n"
        "  webhook_url: https://bot.example/hook/\n"
        "discord:\n  gateway_url: wss://gw.example//\n"
    )
    settings = load(tmp_path, text)
    assert settings.telegram.api_base_url == "http://127.0.0.1:8081"
    assert settings.discord.gateway_url == "wss://gw.example"
    assert settings.telegram.webhook_url == "https://bot.example/hook/"  # a full URL, kept as is


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        (" localhost:80 ", ("localhost", 80)),
        ("[::]:65535", ("::", 65535)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_webhook_listen_is_host_and_port(tmp_path: Path, listen: str, expected) -> None:
    settings = load(tmp_path, f"telegram:\n  webhook_listen: '{listen}'\n")
    assert split_host_port(settings.telegram.webhook_listen) == expected


def test_choices_are_case_insensitive(tmp_path: Path) -> None:
    settings = load(tmp_path, "engine:\n  device: CUDA\nlog_level: debug\n")
    assert (settings.engine.device, settings.log_level) == ("cuda", "DEBUG")


# --- bad values: the message a user reads ---------------------------------------------------

LISTEN = "telegram.webhook_listen: must be host:port with a port from 1 to 65535"
BAD = [
    ("engine:\n  device: gpu\n", "engine.device: must be one of auto, cpu, cuda (got 'gpu')"),
    (
        "engine:\n  dtype: fp8\n",
        "engine.dtype: must be one of auto, float32, float16, bfloat16 (got 'fp8')",
    ),
    (
        "engine:\n  max_batch: 0\n",
        "engine.max_batch: must be auto or a whole number from 1 to 64 (got 0)",
    ),
    (
        "engine:\n  max_batch: 65\n",
        "engine.max_batch: must be auto or a whole number from 1 to 64 (got 65)",
    ),
    (
        "engine:\n  max_batch: automatic\n",
        "engine.max_batch: must be auto or a whole number from 1 to 64 (got 'automatic')",
    ),
    ("engine:\n  compile: maybe\n", "engine.compile: must be true or false (got 'maybe')"),
    ("engine:\n  model: ''\n", "engine.model: must be a non-empty string (got '')"),
    ("limits:\n  max_queue: -5\n", "limits.max_queue: must be a whole number >= 1 (got -5)"),
    (
        "limits:\n  max_prompt_chars: lots\n",
        "limits.max_prompt_chars: must be a whole number >= 1 (got 'lots')",
    ),
    (
        "limits:\n  max_image_bytes: 1.5\n",
        "limits.max_image_bytes: must be a whole number >= 1 (got 1.5)",
    ),
    (
        "limits:\n  max_waiting_per_user: true\n",
        "limits.max_waiting_per_user: must be a whole number >= 1 (got True)",
    ),
    (
        "limits:\n  blocked_words: [spam, ' ']\n",
        "limits.blocked_words[1]: must be a non-empty string (got ' ')",
    ),
    ("limits:\n  blocked_words: {a: 1}\n", "limits.blocked_words: must be a list (got {'a': 1})"),
    (
        "telegram:\n  api_base_url: ftp://files.example\n",
        "telegram.api_base_url: must be empty or start with http:// or https:// "
        "(got 'ftp://files.example')",
    ),
    (
        "telegram:\n  file_base_url: localhost:8081\n",
        "telegram.file_base_url: must be empty or start with http:// or https:// "
        "(got 'localhost:8081')",
    ),
    (
        "telegram:\n  webhook_listen: '8443'\n",
        f"{LISTEN} (got '8443')",
    ),
    (
        "telegram:\n  webhook_listen: 0.0.0.0:0\n",
        f"{LISTEN} (got '0.0.0.0:0')",
    ),
    (
        "telegram:\n  webhook_listen: ':8443'\n",
        f"{LISTEN} (got ':8443')",
    ),
    (
        "telegram:\n  webhook_listen: localhost:65536\n",
        f"{LISTEN} (got 'localhost:65536')",
    ),
    (
        "telegram:\n  webhook_secret: 'not allowed!'\n",
        "telegram.webhook_secret: must be empty or 1 to 256 of the characters A-Z, a-z, 0-9, _ "
        "and -",
    ),
    (
        "discord:\n  gateway_url: https://gateway.example\n",
        "discord.gateway_url: must be empty or start with ws:// or wss:// "
        "(got 'https://gateway.example')",
    ),
    (
        "discord:\n  guild_ids: [12, abc]\n",
        "discord.guild_ids[1]: must be a whole number >= 1 (got 'abc')",
    ),
    (
        "admins:\n  telegram: ['@ann']\n",
        "admins.telegram[0]: must be a numeric user id (got '@ann')",
    ),
    ("storage:\n  db: ''\n", "storage.db: must be a non-empty path (got '')"),
    (
        "log_level: LOUD\n",
        "log_level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'LOUD')",
    ),
    ("telegram:\n  tokn: x\n", "telegram.tokn: unknown setting (did you mean 'token'?)"),
    ("engin:\n  device: cpu\n", "engin: unknown setting (did you mean 'engine'?)"),
    (
        "webhooks: {}\n",
        "webhooks: unknown setting "
        "(known: engine, storage, discord, telegram, admins, limits, queue, web, styles, "
        "log_level)",
    ),
    ("engine: cuda\n", "engine: must be a section of `name: value` lines (got a str)"),
    ("queue:\n  url: http://redis:6379\n",
     "queue.url: must be empty or start with redis:// or rediss://"),
    ("queue:\n  lease: 0\n", "queue.lease: must be a number from 0.5 to 600 (got 0)"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_value_is_refused_with_key_and_reason(tmp_path, text, message) -> None:
    assert error(tmp_path, text) == message


def test_bad_value_from_env_shows_the_interpolated_value(tmp_path: Path) -> None:
    text = "limits:\n  max_queue: ${QUEUE}\n"
    assert error(tmp_path, text, {"QUEUE": "ten"}) == (
        "limits.max_queue: must be a whole number >= 1 (got 'ten')"
    )


# --- file-level errors ----------------------------------------------------------------------


def test_yaml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "engine:\n  device: cpu\n   model: bundled:shapes\n")  # indented 3
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert str(caught.value) == (
        f"{path}: invalid YAML at line 3, column 9: mapping values are not allowed here"
    )


def test_key_given_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "engine:\n  device: cpu\n  device: cuda\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert str(caught.value) == f"{path}: invalid YAML at line 3, column 3: 'device' is set twice"


def test_explicit_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert str(caught.value) == f"{path}: config file not found"


def test_top_level_must_be_sections(tmp_path: Path) -> None:
    path = write(tmp_path, "- engine\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert str(caught.value) == f"{path}: must hold `section:` blocks (got a list)"


# --- storage paths --------------------------------------------------------------------------


def test_relative_storage_paths_resolve_against_config_dir(tmp_path, monkeypatch) -> None:
    config_dir = tmp_path / "srv" / "canvas"
    config_dir.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # somewhere else, to show the cwd does not matter
    path = write(config_dir, "storage:\n  db: state/canvas.db\n  images: /var/canvas/images\n")
    storage = load_settings(path, env={}).storage
    assert storage.db == config_dir / "state/canvas.db"
    assert storage.images == Path("/var/canvas/images")


def test_default_storage_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    assert load(tmp_path, "").storage.db == tmp_path / "data/canvas.db"


def test_relative_config_path_resolves_against_cwd(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "storage:\n  images: pics\n")
    storage = load_settings(Path("config.yaml"), env={}).storage
    assert storage.images == tmp_path / "pics"
    assert storage.images.is_absolute()


# --- tokens stay secret ---------------------------------------------------------------------


def test_tokens_absent_from_repr(tmp_path: Path) -> None:
    text = (
        "telegram:\n  token: ${TG}\n  webhook_secret: literal-webhook-secret\n"
        "discord:\n  token: literal-discord-secret\n"
    )
    settings = load(tmp_path, text, {"TG": SECRET})
    assert settings.telegram.token == SECRET
    assert settings.telegram.webhook_secret == "literal-webhook-secret"
    for shown in (repr(settings), str(settings), repr(settings.telegram)):
        assert SECRET not in shown
        assert "literal-discord-secret" not in shown
        assert "literal-webhook-secret" not in shown


@pytest.mark.parametrize(
    "text",
    [
        f"telegram:\n  token: [{SECRET}]\n",  # wrong type
        f"telegram: {SECRET}\n",  # token given as the section
        f"telegram:\n  tokn: {SECRET}\n",  # misspelt key
        f"telegram:\n  token: {SECRET}: oops\n",  # YAML error on the token's line
        f"telegram:\n  token: {SECRET}\n  token: {SECRET}\n",  # given twice
        f"telegram:\n  webhook_secret: '{SECRET}'\n",  # ':' is not allowed in a secret token
        f"telegram:\n  webhook_secret: [{SECRET}]\n",  # wrong type
    ],
)
def test_token_value_absent_from_error_messages(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    shown: BaseException | None = caught.value
    while shown is not None:  # the traceback also prints chained exceptions, unless suppressed
        assert SECRET not in str(shown)
        shown = None if shown.__suppress_context__ else shown.__context__


# --- named models ----------------------------------------------------------------------------


def test_named_models_with_their_memory_modes_and_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path, "engine:\n  model: fast\n  memory: 6.5\n  models:\n"
                    "    fast: {source: bundled:shapes, defaults: {steps: 8, cfg: 2.5,"
                    " size: 768}}\n"
                    "    big: {source: my/flux, quantize: 4bit, offload: model,"
                    " description: FLUX}\n"
                    "    file: {source: ./sd.safetensors, config: ./sd-config}\n")
    engine = settings.engine
    assert list(engine.catalogue) == ["fast", "big", "file"] and engine.memory == 6.5
    fast = engine.models["fast"].defaults
    assert (fast.steps, fast.cfg, fast.size) == (8, 2.5, 768)
    assert (engine.models["big"].quantize, engine.models["big"].offload) == ("4bit", "model")
    assert engine.models["file"].config == tmp_path / "sd-config"


def test_a_bare_source_in_engine_model_is_the_only_model_as_before(tmp_path: Path) -> None:
    engine = load(tmp_path, "engine:\n  model: my/model\n").engine
    assert list(engine.catalogue) == ["my/model"]
    assert engine.catalogue["my/model"].source == "my/model"


@pytest.mark.parametrize(("text", "message"), [
    ("engine:\n  model: other\n  models:\n    a: {source: bundled:shapes}\n",
     "engine.model: 'other' is not one of engine.models (a)"),
    ("engine:\n  models:\n    a: {source: x, quantize: 3bit}\n  model: a\n",
     "engine.models.a.quantize: must be one of none, 8bit, 4bit, int8-weights (got '3bit')"),
    ("engine:\n  models:\n    a: {description: no source}\n  model: a\n",
     "engine.models.a.source: must be given"),
    ("engine:\n  models:\n    a: {source: x, defaults: {steps: 0}}\n  model: a\n",
     "engine.models.a.defaults.steps: must be a whole number from 1 to 100 (got 0)"),
    ("engine:\n  models:\n    a: {source: x, defaults: {size: 32}}\n  model: a\n",
     "engine.models.a.defaults.size: must be a whole number from 64 to 4096 (got 32)"),
    ("engine:\n  memory: lots\n", "engine.memory: must be auto or a number >= 0.001 (got 'lots')"),
])
def test_bad_models_are_refused_with_the_key(tmp_path: Path, text: str, message: str) -> None:
    assert error(tmp_path, text) == message


def test_a_redis_url_with_its_password_is_kept_out_of_repr(tmp_path: Path) -> None:
    settings = load(tmp_path, "queue:\n  url: redis://:hunter2@gpu-box:6379/0\n"
                    "  local_engine: false\n")
    assert settings.queue.url == "redis://:hunter2@gpu-box:6379/0"
    assert not settings.queue.local_engine and settings.queue.lease == 10.0
    assert "hunter2" not in repr(settings)


def test_the_web_listens_on_localhost_by_default_and_empty_turns_it_off(tmp_path: Path) -> None:
    web = load(tmp_path, "log_level: INFO\n").web
    assert web.listen == "127.0.0.1:8080" and web.base_url == "http://127.0.0.1:8080"
    assert load(tmp_path, "web:\n  listen: ''\n").web.listen == ""
    behind = load(tmp_path, "web:\n  listen: 0.0.0.0:9000\n  public_url: https://pics.example/\n"
                  "  metrics_token: s3cret\n").web
    assert behind.base_url == "https://pics.example"
    assert "s3cret" not in repr(behind)
    assert load(tmp_path, "web:\n  listen: '[::]:9000'\n").web.base_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(("text", "message"), [
    ("web:\n  listen: localhost\n",
     "web.listen: must be empty or host:port with a port from 1 to 65535 (got 'localhost')"),
    ("web:\n  public_url: pics.example\n",
     "web.public_url: must be empty or start with http:// or https:// (got 'pics.example')"),
])
def test_bad_web_settings_are_refused_with_the_key(tmp_path: Path, text: str,
                                                   message: str) -> None:
    assert error(tmp_path, text) == message
