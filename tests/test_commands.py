"""Tests for bot.commands: what users type, and what they read when it is wrong."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from bot.commands import (
    COMMANDS,
    HELP_TEXT,
    MAX_SEED,
    TABLE,
    Cancel,
    CommandError,
    Help,
    History,
    Imagine,
    Inpaint,
    ModelCmd,
    Rate,
    Retrain,
    ShowQueue,
    Vary,
    parse,
    parse_typed,
)
from engine.params import Params


def error_of(text: str, **kwargs: int) -> str:
    """The message a user would read for `text`, which must be refused."""
    with pytest.raises(CommandError) as info:
        parse(text, **kwargs)
    assert str(info.value) == info.value.message
    return info.value.message


# ---------------------------------------------------------------------------
# CommandError and the public constants


def test_command_error_is_a_value_error_with_message():
    err = CommandError("Nope.")
    assert isinstance(err, ValueError)
    assert err.message == "Nope."
    assert str(err) == "Nope."


def test_max_seed():
    assert MAX_SEED == 4294967295


def test_requests_are_frozen():
    request = parse("/imagine a fox")
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.params = Params(prompt="a dog")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.params.prompt = "a dog"  # type: ignore[misc]


def test_commands_describe_every_command_in_one_line():
    assert set(COMMANDS) == {
        "imagine",
        "vary",
        "inpaint",
        "rate",
        "cancel",
        "queue",
        "history",
        "help",
        "retrain",
        "model",
        "models",
        "web",
        "styles",
        "settings",
        "upscale",
        "delete",
        "optout",
        "optin",
        "forgetme",
        "loras",
    }
    for name, description in COMMANDS.items():
        # Telegram's setMyCommands: lowercase names up to 32 chars, descriptions 3-256.
        assert name.islower() and len(name) <= 32
        assert 3 <= len(description) <= 256
        assert "\n" not in description


def test_every_listed_command_parses():
    for name in COMMANDS:
        text = {
            "imagine": "/imagine a fox",
            "inpaint": "/inpaint a hat",
            "rate": "/rate 1 5",
        }.get(name, f"/{name}")
        parse(text)


def test_help_text_lists_every_command_option_and_range():
    for name in COMMANDS:
        assert f"/{name}" in HELP_TEXT
    for option in ("--no", "--seed", "--steps", "--cfg", "--ar", "--n", "--model"):
        assert option in HELP_TEXT
    for option in ("--strength", "--prompt", "--min-score", "--rank"):
        assert option in HELP_TEXT
    for text in ("0-4294967295", "1-100", "0-30", "1-64", "1:4", "4:1", "1-4", "1-100000"):
        assert text in HELP_TEXT
    assert "1-128" in HELP_TEXT and "1-5" in HELP_TEXT
    assert "/retrain status" in HELP_TEXT and "/retrain cancel" in HELP_TEXT
    assert "/model use" in HELP_TEXT
    assert "#12" in HELP_TEXT


def test_module_imports_only_the_standard_library_and_the_params_record():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import bot.commands\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new - set(sys.stdlib_module_names) - {'bot', 'engine'}))\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] == 'engine'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines() == ["[]", "['engine', 'engine.params']"]


# ---------------------------------------------------------------------------
# The table is the one source


def test_commands_and_help_are_made_from_the_table():
    assert list(COMMANDS) == list(TABLE)
    assert {name: command.summary for name, command in TABLE.items()} == COMMANDS
    flat = " ".join(HELP_TEXT.split())  # ignoring where the lines wrap
    for name, command in TABLE.items():
        usage = " ".join([f"/{name}"] + [
            f"<{o.placeholder}>" if o.required else f"[{o.placeholder}]" for o in command.words])
        assert f"{usage}{' [options]' if command.flags else ''} - " in flat
        for option in command.flags:
            assert f"--{option.flag} {option.placeholder}" in flat
        assert command.more in flat


def test_every_option_is_described_and_named_the_same_way_everywhere():
    for name, command in TABLE.items():
        names = [option.name for option in command.options]
        assert len(set(names)) == len(names)
        for option in command.options:
            assert 1 <= len(option.description) <= 100  # Discord's limit
            assert option.name.islower() and option.name.isidentifier()
            if option.flag is not None:
                assert option.example.startswith(f"--{option.flag} ")
        if command.flags:  # the text syntax lists exactly the table's options
            flags = ", ".join(f"--{option.flag}" for option in command.flags)
            assert error_of(f"/{name} --zzz").endswith(f"Options: {flags}.")


@pytest.mark.parametrize(
    ("text", "command", "values"),
    [
        ("/imagine a red fox --no snow --seed 7 --steps 30 --cfg 7.5 --ar 32:18 --n 2 "
         "--model sdxl",
         "imagine", {"prompt": "a red fox", "negative": "snow", "seed": 7, "steps": 30,
                     "cfg": 7.5, "aspect": "32:18", "n": 2, "model": "sdxl"}),
        ("/imagine a fox --cfg 7", "imagine", {"prompt": " a  fox ", "cfg": 7}),
        ("/imagine a fox", "imagine", {"prompt": "a fox", "negative": "  ", "model": None}),
        ("/vary #12 --strength 0.5 --seed 3 --prompt a cat", "vary",
         {"id": "#12", "strength": 0.5, "seed": 3, "prompt": "a cat"}),
        ("/vary", "vary", {"id": None, "prompt": " "}),
        ("/inpaint a hat --no feathers --seed 1 --steps 4 --cfg 30", "inpaint",
         {"prompt": "a hat", "negative": "feathers", "seed": 1, "steps": 4, "cfg": 30.0}),
        ("/rate #7 5", "rate", {"image": " 7 ", "score": 5}),
        ("/cancel", "cancel", {}),
        ("/cancel #9", "cancel", {"job": 9}),
        ("/queue", "queue", {}),
        ("/history", "history", {}),
        ("/help", "help", {}),
        ("/retrain --steps 20 --min-score 4.5 --rank 8", "retrain",
         {"action": None, "steps": 20, "min_score": 4.5, "rank": 8}),
        ("/retrain status", "retrain", {"action": "status"}),
        ("/model", "model", {}),
        ("/model use v3", "model", {"action": "use", "version": "v3"}),
    ],
)
def test_text_and_typed_options_make_the_same_request(text, command, values):
    assert parse(text) == parse_typed(command, values)


@pytest.mark.parametrize(
    ("text", "command", "values"),
    [
        ("/imagine a fox --seed -3", "imagine", {"prompt": "a fox", "seed": -3}),
        ("/imagine a fox --steps 0", "imagine", {"prompt": "a fox", "steps": 0}),
        ("/imagine a fox --cfg 31", "imagine", {"prompt": "a fox", "cfg": 31}),
        ("/imagine a fox --ar 9:1", "imagine", {"prompt": "a fox", "aspect": "9:1"}),
        ("/imagine a fox --model " + "m" * 201, "imagine", {"prompt": "a", "model": "m" * 201}),
        ("/imagine " + "x" * 1001, "imagine", {"prompt": "x" * 1001}),
        ("/imagine --seed 3", "imagine", {"prompt": " \x00 ", "seed": 3}),
        ("/vary 0", "vary", {"id": "0"}),
        ("/vary --strength 1.5", "vary", {"strength": 1.5}),
        ("/inpaint a hat --steps 101", "inpaint", {"prompt": "a hat", "steps": 101}),
        ("/rate 3 6", "rate", {"image": "3", "score": 6}),
        ("/rate x 4", "rate", {"image": "x", "score": 4}),
        ("/cancel 0", "cancel", {"job": 0}),
        ("/retrain --rank 129", "retrain", {"rank": 129}),
        ("/retrain --min-score 0.5", "retrain", {"min_score": 0.5}),
        ("/retrain status --steps 5", "retrain", {"action": "status", "steps": 5}),
        ("/model use", "model", {"action": "use"}),
        ("/model use " + "v" * 201, "model", {"action": "use", "version": "v" * 201}),
    ],
)
def test_text_and_typed_options_are_refused_with_the_same_message(text, command, values):
    with pytest.raises(CommandError) as typed:
        parse_typed(command, values)
    assert error_of(text) == typed.value.message


def test_typed_option_names_are_the_tables():
    with pytest.raises(TypeError, match="no option 'no'"):
        parse_typed("imagine", {"prompt": "a fox", "no": "snow"})  # --no is named negative
    assert parse_typed("imagine", {"prompt": "a fox", "negative": "snow"}).params.negative == "snow"


# ---------------------------------------------------------------------------
# Not a command / unknown commands


@pytest.mark.parametrize("text", ["hello there", "", "   ", "imagine a fox", "\x00\x00"])
def test_text_without_a_slash_points_to_help(text):
    message = error_of(text)
    assert "/help" in message
    assert "slash" in message


def test_a_lone_slash_asks_for_a_command():
    message = error_of("/ a fox")
    assert "after the slash" in message
    assert "/help" in message


def test_unknown_command_message_then_full_help():
    message = error_of("/foo bar")
    assert message == f"Unknown command /foo.\n\n{HELP_TEXT}"


def test_unknown_command_suggests_a_close_one():
    message = error_of("/imgine a fox")
    assert message.startswith("Unknown command /imgine. Did you mean /imagine?")
    assert message.endswith(HELP_TEXT)


def test_unknown_command_with_bot_name_is_named_without_it():
    assert error_of("/foo@SomeBot").startswith("Unknown command /foo.")


def test_a_huge_unknown_command_is_not_echoed_in_full():
    message = error_of("/" + "x" * 5000)
    assert len(message) < len(HELP_TEXT) + 100


# ---------------------------------------------------------------------------
# Command word


@pytest.mark.parametrize(
    "text",
    ["/imagine a fox", "/IMAGINE a fox", "/Imagine a fox", "/imagine@SomeBot a fox",
     "/IMAGINE@MagicCanvasBot a fox", "  /imagine   a fox  ", "/imagine\na fox"],
)  # fmt: skip
def test_command_word_is_case_insensitive_and_ignores_bot_name(text):
    assert parse(text) == Imagine(Params(prompt="a fox"))


def test_bot_name_on_commands_without_arguments():
    assert parse("/queue@SomeBot") == ShowQueue()
    assert parse("/help@SomeBot") == Help()


def test_telegram_start_shows_help():
    assert parse("/start") == Help()


# ---------------------------------------------------------------------------
# /imagine


def test_imagine_defaults():
    request = parse("/imagine a red fox in the snow")
    assert request == Imagine(Params(kind="txt2img", prompt="a red fox in the snow"))
    params = request.params  # None: not given (the service and the model fill it in)
    assert params.negative is None
    assert params.seed is None and params.steps is None and params.cfg is None
    assert params.aspect is None
    assert params.n is None
    assert params.checkpoint is None


def test_imagine_all_options():
    request = parse(
        "/imagine a cat's hat, watercolour --no blurry, text --seed 42 --steps 30 "
        "--cfg 7.5 --ar 16:9 --n 4 --model sdxl-base_v2"
    )
    assert request == Imagine(Params(
        prompt="a cat's hat, watercolour",
        negative="blurry, text",
        seed=42,
        steps=30,
        cfg=7.5,
        aspect=(16, 9),
        n=4,
        checkpoint="sdxl-base_v2",
    ))


def test_imagine_options_before_and_between_prompt_words():
    request = parse("/imagine --seed 7 a red --n 2 fox --no snow, rain")
    assert request == Imagine(Params(prompt="a red fox", negative="snow, rain", seed=7, n=2))


def test_apostrophes_and_quotes_are_kept():
    request = parse("/imagine a cat's hat and \"quoted\" words --no the dog's bone")
    assert request.params.prompt == 'a cat\'s hat and "quoted" words'
    assert request.params.negative == "the dog's bone"


def test_unbalanced_quote_is_fine():
    request = parse("/imagine it's 5 o'clock \"somewhere")
    assert request.params.prompt == "it's 5 o'clock \"somewhere"


def test_em_dash_counts_as_double_dash():
    request = parse("/imagine a fox —no snow —seed 3 —ar 2:3")
    assert request == Imagine(Params(prompt="a fox", negative="snow", seed=3, aspect=(2, 3)))


def test_dashes_not_followed_by_a_letter_are_prompt_text():
    request = parse("/imagine a fox -- in the snow — at dusk --5 -x")
    assert request.params.prompt == "a fox -- in the snow — at dusk --5 -x"


def test_option_names_are_case_insensitive_and_accept_equals():
    request = parse("/imagine a fox --SEED=5 --Model=SDXL --no=snow, rain")
    assert request == Imagine(
        Params(prompt="a fox", negative="snow, rain", seed=5, checkpoint="SDXL")
    )


def test_imagine_whitespace_is_collapsed():
    request = parse("/imagine   a\tred \n\n fox   --no   snow \t  rain  ")
    assert request.params.prompt == "a red fox"
    assert request.params.negative == "snow rain"


def test_imagine_without_prompt_asks_to_describe_the_picture():
    for text in ("/imagine", "/imagine   ", "/imagine --seed 4", "/imagine --no dogs"):
        message = error_of(text)
        assert "describe the picture" in message
        assert "/imagine" in message


def test_null_bytes_and_control_characters_are_removed():
    request = parse("/imagine a\x00 red\x1b[31m fox\x07 --no sn\x00ow")
    assert request.params.prompt == "a red[31m fox"
    assert request.params.negative == "snow"


def test_lone_surrogates_are_removed():
    assert parse("/imagine a fox\ud800").params.prompt == "a fox"


def test_emoji_and_right_to_left_text_are_kept():
    prompt = "a 🦊 in the ❄️ with 👩‍🎨 and مرحبا بالعالم and שלום \u200f"
    assert parse(f"/imagine {prompt}").params.prompt == prompt


def test_sql_looking_text_is_kept_verbatim():
    prompt = "Robert'); DROP TABLE images;-- and 1=1 OR '' = ''"
    assert parse(f"/imagine {prompt}").params.prompt == prompt


def test_prompt_at_the_limit_is_accepted():
    prompt = "a" * 1000
    assert parse(f"/imagine {prompt}").params.prompt == prompt


def test_prompt_one_past_the_limit_is_refused():
    message = error_of("/imagine " + "a" * 1001)
    assert "1001 characters" in message
    assert "limit is 1000" in message


def test_ten_thousand_character_prompt_is_refused_naming_the_limit():
    message = error_of("/imagine " + "x" * 10_000)
    assert "Your prompt is 10000 characters long" in message
    assert "the limit is 1000" in message
    assert len(message) < 200


def test_prompt_limit_counts_after_normalisation():
    # 10 words of 99 letters, separated by runs of spaces and null bytes: 999 chars once tidy.
    prompt = ("  \x00".join(["b" * 99] * 10)).replace("\x00", "")
    assert len(" ".join(prompt.split())) == 999
    assert len(parse("/imagine " + prompt).params.prompt) == 999


def test_custom_prompt_limit():
    assert parse("/imagine abcde", max_prompt_chars=5).params.prompt == "abcde"
    message = error_of("/imagine abcdef", max_prompt_chars=5)
    assert "6 characters" in message and "limit is 5" in message


def test_negative_prompt_limit():
    assert parse("/imagine fox --no " + "n" * 1000).params.negative == "n" * 1000
    message = error_of("/imagine fox --no " + "n" * 1001)
    assert "--no" in message and "1001" in message and "limit is 1000" in message


@pytest.mark.parametrize(("value", "expected"), [("0", 0), (str(MAX_SEED), MAX_SEED), ("+7", 7)])
def test_seed_edges_accepted(value, expected):
    assert parse(f"/imagine fox --seed {value}").params.seed == expected


@pytest.mark.parametrize("value", ["-1", "-3", str(MAX_SEED + 1), "abc", "1.5", "1e3", "9" * 5000])
def test_seed_refused(value):
    message = error_of(f"/imagine fox --seed {value}")
    assert message.startswith("The seed must be a whole number from 0 to 4294967295; you gave ")


def test_negative_seed_message_exactly():
    message = error_of("/imagine fox --seed -3")
    assert message == "The seed must be a whole number from 0 to 4294967295; you gave -3."


def test_long_bad_value_is_shortened_in_the_message():
    message = error_of("/imagine fox --seed " + "9" * 5000)
    assert len(message) < 150
    assert message.endswith("….")


@pytest.mark.parametrize("value", ["1", "100"])
def test_steps_edges_accepted(value):
    assert parse(f"/imagine fox --steps {value}").params.steps == int(value)


@pytest.mark.parametrize("value", ["0", "101", "-5", "ten", "2.0"])
def test_steps_refused(value):
    message = error_of(f"/imagine fox --steps {value}")
    assert "number of steps" in message
    assert "from 1 to 100" in message
    assert f"you gave {value}." in message


@pytest.mark.parametrize(
    ("value", "expected"), [("0", 0.0), ("30", 30.0), ("7.5", 7.5), (".5", 0.5), ("12.", 12.0)]
)
def test_cfg_accepted(value, expected):
    assert parse(f"/imagine fox --cfg {value}").params.cfg == expected


@pytest.mark.parametrize(
    "value", ["-0.1", "30.01", "31", "nan", "NaN", "inf", "-inf", "Infinity", "1e1", "7,5", "x"]
)
def test_cfg_refused(value):
    message = error_of(f"/imagine fox --cfg {value}")
    assert "CFG scale" in message
    assert "from 0 to 30" in message
    assert f"you gave {value}." in message


def test_cfg_with_hundreds_of_digits_is_refused_not_infinite():
    assert "CFG scale" in error_of("/imagine fox --cfg " + "9" * 400)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("16:9", (16, 9)),
        ("16x9", (16, 9)),
        ("16X9", (16, 9)),
        ("2:3", (2, 3)),
        ("1:1", (1, 1)),
        ("4:1", (4, 1)),
        ("1:4", (1, 4)),
        ("64:16", (4, 1)),
        ("64:64", (1, 1)),
        ("32:18", (16, 9)),
        ("64:63", (64, 63)),
    ],
)
def test_aspect_accepted(value, expected):
    assert parse(f"/imagine fox --ar {value}").params.aspect == expected


@pytest.mark.parametrize(
    "value",
    ["17:4", "4:17", "5:1", "1:5", "65:64", "64:65", "0:1", "1:0", "16", "16:9:1", "a:b",
     "-16:9", "1.5:1", ":", "16:"],
)  # fmt: skip
def test_aspect_refused(value):
    message = error_of(f"/imagine fox --ar {value}")
    assert "aspect ratio" in message
    assert "1 to 64" in message
    assert "between 1:4 and 4:1" in message
    assert f"you gave {value}." in message


@pytest.mark.parametrize("value", ["1", "4"])
def test_n_edges_accepted(value):
    assert parse(f"/imagine fox --n {value}").params.n == int(value)


@pytest.mark.parametrize("value", ["0", "5", "two", "1.0"])
def test_n_refused(value):
    message = error_of(f"/imagine fox --n {value}")
    assert "number of pictures" in message and "from 1 to 4" in message


def test_model_name_edges():
    assert parse("/imagine fox --model " + "m" * 200).params.checkpoint == "m" * 200
    message = error_of("/imagine fox --model " + "m" * 201)
    assert "model name" in message and "1 to 200 characters" in message and "201" in message


def test_model_name_with_spaces_becomes_prompt_text():
    # A value is one token, so the rest of a spaced name is read as prompt words.
    request = parse("/imagine fox --model my model")
    assert request.params.checkpoint == "my" and request.params.prompt == "fox model"


def test_unknown_option_lists_the_allowed_ones():
    message = error_of("/imagine fox --foo 3")
    assert message == (
        "Unknown option --foo for /imagine. Options: --no, --seed, --steps, --cfg, --ar, --n, "
        "--model, --style, --lora."
    )


def test_unknown_option_suggests_a_close_one():
    message = error_of("/imagine fox --sed 3")
    assert message.startswith("Unknown option --sed for /imagine. Options: --no, --seed")
    assert message.endswith("Did you mean --seed?")


def test_option_of_another_command_is_unknown():
    message = error_of("/imagine fox --strength 0.5")
    assert "Unknown option --strength for /imagine" in message


@pytest.mark.parametrize("option", ["seed", "no", "steps", "cfg", "ar", "n", "model"])
def test_repeated_option_is_named(option):
    value = {"no": "dogs", "ar": "1:1", "model": "m", "cfg": "5"}.get(option, "2")
    message = error_of(f"/imagine fox --{option} {value} --{option} {value}")
    assert message == f"You gave --{option} twice; please give it only once."


def test_repeated_option_spelt_differently_is_still_repeated():
    assert "--seed twice" in error_of("/imagine fox --seed 1 —SEED=2")


@pytest.mark.parametrize(
    ("text", "option", "example"),
    [
        ("/imagine fox --seed", "seed", "--seed 42"),
        ("/imagine fox --seed --steps 5", "seed", "--seed 42"),
        ("/imagine fox --steps", "steps", "--steps 30"),
        ("/imagine fox --cfg", "cfg", "--cfg 7.5"),
        ("/imagine fox --ar", "ar", "--ar 16:9"),
        ("/imagine fox --n", "n", "--n 4"),
        ("/imagine fox --model", "model", "--model"),
        ("/imagine fox --seed=", "seed", "--seed 42"),
    ],
)
def test_option_missing_its_value(text, option, example):
    message = error_of(text)
    assert message.startswith(f"--{option} needs a value")
    assert example in message


@pytest.mark.parametrize(
    "text", ["/imagine fox --no", "/imagine fox --no --seed 3", "/imagine fox --no \x00 \t"]
)
def test_empty_negative_text_is_refused(text):
    message = error_of(text)
    assert message.startswith("--no needs some text after it")
    assert "--no blurry, text" in message


# ---------------------------------------------------------------------------
# /vary


def test_vary_defaults():
    assert parse("/vary") == Vary()
    assert parse("/vary") == Vary(image_id=None, params=Params(kind="img2img"))
    assert parse("/vary").params.prompt is None  # the source picture's prompt


@pytest.mark.parametrize("text", ["/vary 12", "/vary #12", "/VARY@SomeBot #12"])
def test_vary_with_id(text):
    assert parse(text) == Vary(image_id=12)


def test_vary_all_options():
    request = parse("/vary #12 --strength 0.6 --seed 9 --prompt a cat's hat, in red")
    assert request == Vary(
        12, Params(kind="img2img", strength=0.6, seed=9, prompt="a cat's hat, in red")
    )


def test_vary_prompt_stops_at_the_next_option():
    request = parse("/vary --prompt a red   fox --strength 1 #3")
    assert request == Vary(3, Params(kind="img2img", strength=1.0, prompt="a red fox"))


@pytest.mark.parametrize(("value", "expected"), [("1", 1.0), ("0.001", 0.001), ("1.0", 1.0)])
def test_vary_strength_accepted(value, expected):
    assert parse(f"/vary --strength {value}").params.strength == expected


@pytest.mark.parametrize("value", ["0", "0.0", "-0.5", "1.001", "2", "nan", "inf", "-inf", "x"])
def test_vary_strength_refused(value):
    message = error_of(f"/vary 3 --strength {value}")
    assert "strength must be a number above 0 and at most 1" in message
    assert f"you gave {value}." in message


@pytest.mark.parametrize("value", ["0", "#0", "-1", "abc", "#", "##3", "1.5", "9" * 40])
def test_vary_bad_id(value):
    message = error_of(f"/vary {value}")
    assert "image id must be a positive whole number like 12 or #12" in message


def test_vary_extra_words_are_refused_pointing_to_prompt():
    message = error_of("/vary 12 a red fox")
    assert "at most one image id" in message
    assert "--prompt" in message


def test_vary_empty_prompt_is_refused():
    assert error_of("/vary 3 --prompt").startswith("--prompt needs some text after it")
    assert error_of("/vary 3 --prompt --seed 2").startswith("--prompt needs some text")


def test_vary_prompt_limit():
    message = error_of("/vary 3 --prompt " + "p" * 1001)
    assert "--prompt" in message and "1001" in message and "limit is 1000" in message
    assert parse("/vary 3 --prompt " + "p" * 1000).params.prompt == "p" * 1000


def test_vary_unknown_option():
    message = error_of("/vary 3 --no dogs")
    assert message.startswith(
        "Unknown option --no for /vary. Options: --strength, --seed, --prompt"
    )


def test_vary_seed_range():
    assert parse(f"/vary --seed {MAX_SEED}").params.seed == MAX_SEED
    assert "from 0 to 4294967295" in error_of(f"/vary --seed {MAX_SEED + 1}")


# ---------------------------------------------------------------------------
# /inpaint


def test_inpaint_defaults():
    request = parse("/inpaint a red woollen hat")
    assert request == Inpaint(Params(kind="inpaint", prompt="a red woollen hat"))


def test_inpaint_all_options():
    request = parse("/inpaint a cat's hat --no feathers --seed 1 --steps 100 --cfg 30")
    assert request == Inpaint(Params(
        kind="inpaint", prompt="a cat's hat", negative="feathers", seed=1, steps=100, cfg=30.0
    ))


def test_inpaint_needs_a_prompt():
    assert "describe the picture" in error_of("/inpaint --seed 3")


def test_inpaint_has_no_imagine_only_options():
    for option in ("ar", "n", "model"):
        message = error_of(f"/inpaint hat --{option} 1")
        assert f"Unknown option --{option} for /inpaint. Options: --no, --seed, --steps, --cfg" in (
            message
        )


def test_inpaint_ranges():
    assert "from 1 to 100" in error_of("/inpaint hat --steps 101")
    assert "from 0 to 30" in error_of("/inpaint hat --cfg inf")
    assert "limit is 1000" in error_of("/inpaint " + "h" * 1001)


# ---------------------------------------------------------------------------
# /rate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/rate 12 4", Rate(image_id=12, score=4)),
        ("/rate #12 1", Rate(image_id=12, score=1)),
        ("/rate #12 5", Rate(image_id=12, score=5)),
        ("/Rate@SomeBot 3 2", Rate(image_id=3, score=2)),
    ],
)
def test_rate(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize("score", ["0", "6", "4.5", "five", "-1"])
def test_rate_bad_score(score):
    message = error_of(f"/rate 12 {score}")
    assert message == f"The score must be a whole number from 1 to 5; you gave {score}."


def test_rate_bad_id():
    assert "image id must be a positive whole number" in error_of("/rate abc 4")


@pytest.mark.parametrize(("text", "count"), [("/rate", "0 words"), ("/rate 3", "1 word."),
                                              ("/rate 3 4 5", "3 words")])  # fmt: skip
def test_rate_needs_exactly_two_words(text, count):
    message = error_of(text)
    assert "/rate needs an image id and a score from 1 to 5, like /rate #12 4" in message
    assert f"you gave {count}" in message


def test_rate_takes_no_options():
    assert error_of("/rate 3 4 --seed 2") == (
        "Unknown option --seed for /rate. /rate takes no options."
    )


# ---------------------------------------------------------------------------
# /cancel, /queue, /history, /help


def test_cancel():
    assert parse("/cancel") == Cancel()
    assert parse("/cancel").job_id is None
    assert parse("/cancel 7") == Cancel(job_id=7)
    assert parse("/cancel #7") == Cancel(job_id=7)


def test_cancel_refusals():
    assert "job id must be a positive whole number like 12 or #12" in error_of("/cancel seven")
    assert "at most one job number" in error_of("/cancel 7 8")
    assert "Unknown option --all for /cancel" in error_of("/cancel --all")


def test_queue_and_history():
    assert parse("/queue") == ShowQueue()
    assert parse("/history") == History()
    assert parse("/HISTORY@SomeBot") == History()


@pytest.mark.parametrize("command", ["queue", "history"])
def test_no_argument_commands_refuse_extra_words(command):
    assert error_of(f"/{command} now") == f'/{command} takes nothing after it; you gave "now".'
    assert error_of(f"/{command} --all").startswith(f"Unknown option --all for /{command}.")


def test_help_ignores_anything_after_it():
    assert parse("/help") == Help()
    assert parse("/help imagine --seed") == Help()


# ---------------------------------------------------------------------------
# /retrain


def test_retrain_defaults():
    assert parse("/retrain") == Retrain()
    assert parse("/retrain") == Retrain(action="start", steps=None, min_score=None, rank=None)
    assert parse("/retrain start") == Retrain()


def test_retrain_all_options():
    request = parse("/retrain --steps 2000 --min-score 4.5 --rank 16")
    assert request == Retrain(action="start", steps=2000, min_score=4.5, rank=16)


def test_retrain_min_score_with_underscore():
    assert parse("/retrain --min_score 4").min_score == 4.0


@pytest.mark.parametrize("action", ["status", "cancel", "STATUS", "Cancel"])
def test_retrain_actions(action):
    assert parse(f"/retrain {action}") == Retrain(action=action.lower())


def test_retrain_edges():
    assert parse("/retrain --steps 1 --min-score 1 --rank 1") == Retrain(
        steps=1, min_score=1.0, rank=1
    )
    assert parse("/retrain --steps 100000 --min-score 5 --rank 128") == Retrain(
        steps=100000, min_score=5.0, rank=128
    )


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("steps", "0", "number of training steps must be a whole number from 1 to 100000"),
        ("steps", "100001", "from 1 to 100000"),
        ("min-score", "0.99", "minimum score must be a number from 1 to 5"),
        ("min-score", "5.01", "from 1 to 5"),
        ("min-score", "nan", "from 1 to 5"),
        ("rank", "0", "rank must be a whole number from 1 to 128"),
        ("rank", "129", "from 1 to 128"),
    ],
)
def test_retrain_refused_past_the_edges(option, value, expected):
    message = error_of(f"/retrain --{option} {value}")
    assert expected in message
    assert f"you gave {value}." in message


def test_retrain_status_takes_no_options():
    assert error_of("/retrain status --steps 5") == "/retrain status takes no options."


def test_retrain_unknown_action():
    message = error_of("/retrain now")
    assert '/retrain "now"' in message
    assert "/retrain status" in message and "/retrain cancel" in message
    assert "/retrain status" in error_of("/retrain status now")


def test_retrain_unknown_option():
    message = error_of("/retrain --lr 0.1")
    assert message == ("Unknown option --lr for /retrain. Options: --steps, --min-score, --rank, "
                       "--model.")


# ---------------------------------------------------------------------------
# /model


def test_model_list():
    assert parse("/model") == ModelCmd()
    assert parse("/model") == ModelCmd(action="list", version=None)
    assert parse("/model list") == ModelCmd()
    assert parse("/MODEL@SomeBot LIST") == ModelCmd()


def test_model_use_keeps_the_version_spelling():
    assert parse("/model use v3") == ModelCmd(action="use", version="v3")
    assert parse("/model USE My-LoRA_2") == ModelCmd(action="use", version="My-LoRA_2")


def test_model_use_version_length():
    assert parse("/model use " + "v" * 200).version == "v" * 200
    message = error_of("/model use " + "v" * 201)
    assert "model version" in message and "1 to 200 characters" in message


@pytest.mark.parametrize("text", ["/model use", "/model use v1 v2"])
def test_model_use_needs_exactly_one_version(text):
    assert "/model use needs exactly one version name" in error_of(text)


@pytest.mark.parametrize("text", ["/model switch v3", "/model list all", "/model v3"])
def test_model_unknown_action(text):
    message = error_of(text)
    assert "I don't know /model" in message
    assert "/model use <version>" in message


def test_model_takes_no_options():
    assert error_of("/model --version 3") == (
        "Unknown option --version for /model. Options: --model."
    )
