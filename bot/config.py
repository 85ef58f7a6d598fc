"""Typed settings read from a YAML file, checked once at start.

Strings may use ``${VAR}`` (VAR must be set) and ``${VAR:-default}`` (default when VAR is unset
or empty); values are interpolated first, then converted to the field's type, so an
environment variable can fill any field. Anything wrong is refused with a ``ConfigError`` that
names the dotted key and the reason, e.g. ``engine.device: must be one of auto, cpu, cuda
(got 'gpu')``.

This module runs in the bot process: standard library and yaml only (never torch).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "DEFAULT_MODELS",
    "AdminSettings",
    "ConfigError",
    "DiscordSettings",
    "EngineSettings",
    "LimitSettings",
    "ModelDefaults",
    "ModelSettings",
    "Settings",
    "StorageSettings",
    "StyleSettings",
    "TelegramSettings",
    "WebSettings",
    "default_config_path",
    "load_settings",
    "split_host_port",
]


class ConfigError(ValueError):
    """The configuration is unusable; the message says which key and why."""


def _setting(default: Any, *, secret: bool = False, **rules: Any) -> Any:
    """A dataclass field with validation rules in its metadata.

    Rules: choices, min, max, auto (an int that may also be written `auto`, kept as
    AUTO_BATCH), schemes (URL schemes, empty allowed), strip_slash, nonempty, digits (numeric
    ids), host_port (`host:port`; with empty_ok, empty too), token_chars (empty, or what
    Telegram accepts as a webhook secret token). A secret field is left out of repr() and its
    value is never put in an error message.
    """
    return field(default=default, repr=not secret, metadata={"secret": secret, **rules})


_HTTP = ("http", "https")
AUTO_BATCH = 0


DTYPES = ("auto", "float32", "float16", "bfloat16")
# none; bitsandbytes' LLM.int8 and NF4 (CUDA); torchao's int8 weight-only (CPU or CUDA)
QUANTIZE = ("none", "8bit", "4bit", "int8-weights")
OFFLOAD = ("none", "model", "sequential", "group")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}")


@dataclass(frozen=True)
class ModelDefaults:
    """What a job on this model gets for what its user did not give (None: the family's)."""

    steps: int | None = _setting(None, min=1, max=100)
    cfg: float | None = _setting(None, min=0, max=30)
    # The side of a square image in pixels (other aspects keep its area): over the family's
    # native size, for a model fine-tuned at another size (SD 1.5 at 768, SDXL-Turbo at 512).
    size: int | None = _setting(None, min=64, max=4096)


@dataclass(frozen=True)
class ModelSettings:
    # bundled:NAME, random:FAMILY, a local diffusers folder, a hub id, a single-file
    # .safetensors checkpoint (with `config`: a local folder of its diffusers configs), or a
    # .gguf denoiser (with `config`: a local diffusers copy of the same model)
    source: str = _setting("", nonempty=True, required=True)
    description: str = ""
    dtype: str = _setting("auto", choices=DTYPES)
    quantize: str = _setting("none", choices=QUANTIZE)
    offload: str = _setting("none", choices=OFFLOAD)
    config: Path | None = None
    defaults: ModelDefaults = field(default_factory=ModelDefaults)


DEFAULT_MODELS = {
    "shapes": ModelSettings("bundled:shapes", "The bundled UNet model: coloured shapes"),
    "shapes-sd3": ModelSettings("bundled:shapes-sd3",
                                "The bundled SD 3 transformer model: coloured shapes"),
}


@dataclass(frozen=True)
class EngineSettings:
    # The default model: a name in `models`, or (as in older configs) a bare source, which
    # is then the only model.
    model: str = _setting("shapes", nonempty=True)
    models: dict[str, ModelSettings] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    device: str = _setting("auto", choices=("auto", "cpu", "cuda"))
    # AUTO_BATCH (written `auto`): sized to the device's memory by the engine.
    max_batch: int = _setting(AUTO_BATCH, min=1, max=64, auto=True)
    dtype: str = _setting("auto", choices=DTYPES)
    compile: bool = False
    # GB of device memory the engine keeps models in; 0 (written `auto`): what is free after
    # the first model loads, less headroom.
    memory: float = _setting(0.0, min=0.001, auto=True)
    # A folder of LoRA files (.safetensors) people may add with --lora NAME[:WEIGHT].
    loras: Path | None = None
    # What /upscale enlarges with: an ESRGAN-family model file (.pth, .safetensors; needs
    # spandrel) or an SD x4 upscaler (a diffusers folder or hub id); empty: a "hires fix" by
    # the picture's own model.
    upscaler: str = ""

    def __post_init__(self) -> None:
        for name in self.models:
            if not MODEL_NAME.fullmatch(str(name)):
                raise ConfigError(f"engine.models.{name}: a model's name is 1 to 100 letters, "
                                  "digits and . _ - : / (starting with a letter or digit)")
        if self.model not in self.models and self.models != DEFAULT_MODELS:
            raise ConfigError(f"engine.model: {self.model!r} is not one of engine.models ("
                              + ", ".join(self.models) + ")")

    @property
    def catalogue(self) -> dict[str, ModelSettings]:
        """The models by name. A bare source in `engine.model` with no `models` of its own is
        the one model, named by its source."""
        if self.model in self.models:
            return self.models
        return {self.model: ModelSettings(self.model)}


@dataclass(frozen=True)
class StorageSettings:
    # Relative paths are resolved against the config file's directory by load_settings().
    db: Path = Path("data/canvas.db")
    images: Path = Path("data/images")


@dataclass(frozen=True)
class DiscordSettings:
    token: str = _setting("", secret=True)
    api_base_url: str = _setting("", schemes=_HTTP, strip_slash=True)
    gateway_url: str = _setting("", schemes=("ws", "wss"), strip_slash=True)
    guild_ids: tuple[int, ...] = _setting((), min=1)


@dataclass(frozen=True)
class TelegramSettings:
    token: str = _setting("", secret=True)
    api_base_url: str = _setting("", schemes=_HTTP, strip_slash=True)
    file_base_url: str = _setting("", schemes=_HTTP, strip_slash=True)
    # A full URL whose path matters, so a trailing slash is kept.
    webhook_url: str = _setting("", schemes=_HTTP)
    # Where the bot's own webhook server listens (used only with webhook_url).
    webhook_listen: str = _setting("0.0.0.0:8443", host_port=True)
    # Sent back by Telegram in X-Telegram-Bot-Api-Secret-Token; empty: random per start.
    webhook_secret: str = _setting("", secret=True, token_chars=True)


@dataclass(frozen=True)
class AdminSettings:
    # User ids as strings; YAML may give them as numbers.
    discord: frozenset[str] = _setting(frozenset(), digits=True)
    telegram: frozenset[str] = _setting(frozenset(), digits=True)


@dataclass(frozen=True)
class LimitSettings:
    max_waiting_per_user: int = _setting(3, min=1)
    max_queue: int = _setting(100, min=1)
    max_prompt_chars: int = _setting(1000, min=1)
    max_image_bytes: int = _setting(10_000_000, min=1)
    max_image_pixels: int = _setting(16_777_216, min=1)
    # An empty word would match every prompt, hence nonempty.
    blocked_words: tuple[str, ...] = _setting((), nonempty=True)
    # Admins' jobs are served before everyone else's (still in turn among themselves).
    admin_priority: bool = False


@dataclass(frozen=True)
class QueueSettings:
    # Empty: the in-process queue. redis://[:password@]host:port/db (or rediss:// for TLS):
    # Redis Streams between the bot and `canvas worker` processes (engine/transport/redis.py).
    url: str = _setting("", secret=True, schemes=("redis", "rediss"))
    # Whether `canvas run` and `canvas console` also start their own engine, as without Redis.
    local_engine: bool = True
    # Seconds a worker's jobs stay its own without a heartbeat; then another worker runs them.
    lease: float = _setting(10.0, min=0.5, max=600)


@dataclass(frozen=True)
class WebSettings:
    # Where the gallery's web server listens; empty: no web app.
    listen: str = _setting("127.0.0.1:8080", host_port=True, empty_ok=True)
    # The address people reach it by, put in the links /web sends (behind a reverse proxy:
    # its https:// address); empty: http://<listen>.
    public_url: str = _setting("", schemes=_HTTP, strip_slash=True)
    # Lets /metrics answer other hosts than the listen address's own, given as a bearer token.
    metrics_token: str = _setting("", secret=True)

    @property
    def base_url(self) -> str:
        """Where links point: public_url, else the listen address itself."""
        if self.public_url or not self.listen:
            return self.public_url
        host, port = split_host_port(self.listen)
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"


@dataclass(frozen=True)
class StyleSettings:
    # What the model is told: `{prompt}` is where the user's own words go.
    prompt: str = _setting("", nonempty=True, required=True)
    negative: str = ""  # added to the user's --no
    description: str = ""

    def apply(self, words: str) -> str:
        return self.prompt.replace("{prompt}", words)


STYLE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DEFAULT_STYLES = {  # as config.yaml ships them
    "watercolor": StyleSettings("{prompt}, watercolor painting, soft light, paper texture",
                                "photo, 3d render", "Soft watercolour on paper"),
    "photo": StyleSettings("a photograph of {prompt}, 35mm, natural light, sharp focus",
                           "painting, drawing, cartoon", "A sharp 35mm photograph"),
    "pixel-art": StyleSettings("{prompt}, pixel art, 16-bit, limited palette", "blurry, photo",
                               "Retro 16-bit pixel art"),
}


@dataclass(frozen=True)
class Settings:
    engine: EngineSettings = field(default_factory=EngineSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    telegram: TelegramSettings = field(default_factory=TelegramSettings)
    admins: AdminSettings = field(default_factory=AdminSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    web: WebSettings = field(default_factory=WebSettings)
    # --style NAME: prompt templates by name.
    styles: dict[str, StyleSettings] = field(default_factory=lambda: dict(DEFAULT_STYLES))
    log_level: str = _setting("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))

    def __post_init__(self) -> None:
        for name, style in self.styles.items():
            if not STYLE_NAME.fullmatch(str(name)):
                raise ConfigError(f"styles.{name}: a style's name is 1 to 32 lowercase letters, "
                                  "digits, _ and - (starting with a letter or digit)")
            if style.prompt.count("{prompt}") != 1:
                raise ConfigError(f"styles.{name}.prompt: must hold {{prompt}} once, where the "
                                  f"user's words go (got {style.prompt!r})")


def split_host_port(value: str) -> tuple[str, int]:
    """`host:port` as (host, port); an IPv6 host may be written in brackets, `[::]:8443`.
    Raises ValueError when the value is not a host and a port from 1 to 65535."""
    host, colon, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not re.fullmatch(r"[0-9]{1,5}", port) \
            or not 1 <= int(port) <= 65535:
        raise ValueError(f"not host:port: {value!r}")
    return host, int(port)


def default_config_path() -> Path:
    """./config.yaml if present, else the config.yaml at the repo root (it may not exist)."""
    local = Path.cwd() / "config.yaml"
    if local.is_file():
        return local
    return Path(__file__).resolve().parent.parent / "config.yaml"


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, interpolate and validate the config; raise ConfigError if anything is wrong.

    With ``path=None`` the default config path is used, and all defaults if that file does
    not exist. An explicit path that does not exist is an error.
    """
    env = os.environ if env is None else env
    if path is None:
        path = default_config_path()
        if not path.is_file():
            return _Builder(env, Path.cwd()).build(Settings, {}, "")
    path = Path(path).expanduser()
    data = _read_yaml(path)
    return _Builder(env, path.parent.absolute()).build(Settings, data, "")


# --- reading YAML -------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, resolved by super()
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"'{key}' is set twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Mapping[Any, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read config file: {reason}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        # Only the problem and its position: YAML's own message quotes the offending line,
        # which may hold a token. `from None` keeps that message out of the traceback too.
        raise ConfigError(f"{path}: invalid YAML{_yaml_position(e)}: {_yaml_problem(e)}") from None
    if data is None:  # an empty file, or only comments
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: must hold `section:` blocks (got a {type(data).__name__})")
    return data


def _yaml_position(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _yaml_problem(error: yaml.YAMLError) -> str:
    return getattr(error, "problem", None) or type(error).__name__


# --- interpolation ------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_NAME_AND_DEFAULT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)


def _interpolate(value: Any, key: str, env: Mapping[str, str]) -> Any:
    """Replace ${VAR} / ${VAR:-default} in a string, or in each string of a list."""
    if isinstance(value, list):
        return [_interpolate(item, key, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        reference = _NAME_AND_DEFAULT.fullmatch(match.group(1))
        if reference is None:
            raise ConfigError(
                f"{key}: bad variable reference '{match.group(0)}' "
                "(write ${NAME} or ${NAME:-default})"
            )
        name, default = reference.groups()
        found = env.get(name)
        if default is not None:
            return found or default
        if found is None:
            raise ConfigError(
                f"{key}: environment variable {name} is not set "
                f"(write ${{{name}:-}} to make it optional)"
            )
        return found

    return _REFERENCE.sub(replace, value)


# --- conversion ---------------------------------------------------------------------------


class _Invalid(Exception):
    """A value does not fit its field; the caller words the message."""


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Invalid


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _Invalid


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Invalid
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _Invalid


def _to_str(value: Any) -> str:
    # Ids such as admin user ids are often written as bare numbers.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return value
    raise _Invalid


_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str, Path: _to_str}


def _check(value: Any, rules: Mapping[str, Any]) -> Any:
    """Apply a field's rules to one converted value; return the (normalised) value."""
    if "choices" in rules:
        by_lower = {choice.lower(): choice for choice in rules["choices"]}
        if value.strip().lower() not in by_lower:
            raise _Invalid
        return by_lower[value.strip().lower()]
    if "min" in rules and value < rules["min"]:
        raise _Invalid
    if "max" in rules and value > rules["max"]:
        raise _Invalid
    if rules.get("nonempty") and not value.strip():
        raise _Invalid
    if rules.get("digits") and not re.fullmatch(r"[0-9]+", value):
        raise _Invalid
    if rules.get("host_port"):
        if rules.get("empty_ok") and not value.strip():
            return ""
        try:
            split_host_port(value)
        except ValueError:
            raise _Invalid from None
        return value.strip()
    if rules.get("token_chars") and not re.fullmatch(r"[A-Za-z0-9_-]{0,256}", value):
        raise _Invalid
    if "schemes" in rules and value:
        prefixes = tuple(f"{scheme}://" for scheme in rules["schemes"])
        if not value.startswith(prefixes) or value in prefixes:
            raise _Invalid
        if rules.get("strip_slash"):
            value = value.rstrip("/")
    return value


def _expected(kind: type, rules: Mapping[str, Any]) -> str:
    """What a valid value looks like, worded to follow 'must be'."""
    if "choices" in rules:
        return "one of " + ", ".join(rules["choices"])
    if "schemes" in rules:
        return "empty or start with " + " or ".join(f"{s}://" for s in rules["schemes"])
    if rules.get("digits"):
        return "a numeric user id"
    if rules.get("host_port"):
        empty = "empty or " if rules.get("empty_ok") else ""
        return f"{empty}host:port with a port from 1 to 65535"
    if rules.get("token_chars"):
        return "empty or 1 to 256 of the characters A-Z, a-z, 0-9, _ and -"
    if kind is bool:
        return "true or false"
    if kind in (int, float):
        low, high = rules.get("min"), rules.get("max")
        if kind is float:
            auto = "auto or " if rules.get("auto") else ""
            return f"{auto}a number" + (f" from {low:g} to {high:g}" if high is not None else
                                        f" >= {low:g}" if low is not None else "")
        if low is not None and high is not None:
            auto = "auto or " if rules.get("auto") else ""
            return f"{auto}a whole number from {low} to {high}"
        return "a whole number" + (f" >= {low}" if low is not None else "")
    if kind is Path:
        return "a non-empty path"
    return "a non-empty string" if rules.get("nonempty") else "a string"


@dataclass
class _Builder:
    """Builds a settings dataclass from plain YAML data, field by field."""

    env: Mapping[str, str]
    base_dir: Path  # relative paths are resolved against this

    def build(self, cls: type, data: Mapping[Any, Any], where: str) -> Any:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        _refuse_unknown(data, fields, where)
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for name, spec in fields.items():
            key = f"{where}.{name}" if where else name
            kind, raw = _optional(hints[name]), data.get(name)
            if dataclasses.is_dataclass(kind):
                values[name] = self.build(kind, _section(raw, key), key)
            elif get_origin(kind) is dict:  # named sections, e.g. engine.models
                if raw is not None:
                    item = get_args(kind)[1]
                    values[name] = {str(entry): self.build(item, _section(body, f"{key}.{entry}"),
                                                           f"{key}.{entry}")
                                    for entry, body in _section(raw, key).items()}
            elif raw is not None:  # null (e.g. `token:` with nothing after it) keeps the default
                value = self.field_value(raw, kind, key, spec.metadata, hints[name])
                if value is not None:
                    values[name] = value
            elif spec.metadata.get("required"):
                raise ConfigError(f"{key}: must be given")
            elif kind is Path and spec.default is not None:
                values[name] = self.resolve(spec.default)
        return cls(**values)

    def field_value(self, raw: Any, kind: Any, key: str, rules: Mapping[str, Any],
                    declared: Any = None) -> Any:
        value = _interpolate(raw, key, self.env)
        if declared is not None and declared is not kind and isinstance(value, str) \
                and not value.strip():
            return None  # an optional setting left empty (`${VAR:-}`): not set
        collection = get_origin(kind)
        if collection not in (tuple, frozenset):
            return self.scalar(value, kind, key, rules)
        if isinstance(value, str):  # e.g. "1,2,3" from an environment variable
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list{_shown(value, rules)}")
        item_kind = get_args(kind)[0]
        return collection(
            self.scalar(item, item_kind, f"{key}[{i}]", rules) for i, item in enumerate(value)
        )

    def scalar(self, value: Any, kind: type, key: str, rules: Mapping[str, Any]) -> Any:
        if rules.get("auto") and isinstance(value, str) and value.strip().lower() == "auto":
            return kind(AUTO_BATCH)
        try:
            converted = _check(_CONVERTERS[kind](value), rules)
            if kind is Path:
                if not converted.strip():
                    raise _Invalid
                return self.resolve(Path(converted))
            return converted
        except _Invalid:
            reason = f"must be {_expected(kind, rules)}{_shown(value, rules)}"
            raise ConfigError(f"{key}: {reason}") from None

    def resolve(self, path: Path) -> Path:
        path = path.expanduser()
        return path if path.is_absolute() else self.base_dir / path


def _optional(kind: Any) -> Any:
    """`int | None` is read as int: null keeps the default (None)."""
    args = get_args(kind)
    if type(None) in args and len(args) == 2:
        return next(arg for arg in args if arg is not type(None))
    return kind


def _shown(value: Any, rules: Mapping[str, Any]) -> str:
    """The ' (got ...)' part of a message, left out for secrets."""
    return "" if rules.get("secret") else f" (got {value!r})"


def _section(raw: Any, key: str) -> Mapping[Any, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        # Only the type: `telegram: <token>` is a plausible mistake.
        raise ConfigError(
            f"{key}: must be a section of `name: value` lines (got a {type(raw).__name__})"
        )
    return raw


def _refuse_unknown(data: Mapping[Any, Any], fields: Mapping[str, Any], where: str) -> None:
    for name in data:
        if name in fields:
            continue
        key = f"{where}.{name}" if where else str(name)
        close = difflib.get_close_matches(str(name), list(fields), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "known: " + ", ".join(fields)
        raise ConfigError(f"{key}: unknown setting ({hint})")
