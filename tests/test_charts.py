"""The web gallery's inline SVG charts (bot/web/charts.py), read back as a viewer would see them:
parsed as XML, with the lines' coordinates, the legend's and axes' texts."""

from __future__ import annotations

import math
import random
import re
import time
import xml.etree.ElementTree as ET

import jinja2
import pytest
from markupsafe import Markup

from bot.web.charts import PALETTE, Series, compact, line_chart

SVG = "{http://www.w3.org/2000/svg}"


def parse(chart: Markup) -> ET.Element:
    """The chart as an XML tree (which fails if it is not well-formed)."""
    assert isinstance(chart, Markup)
    root = ET.fromstring(str(chart))
    assert root.tag == f"{SVG}svg"
    return root


def lines(root: ET.Element) -> list[ET.Element]:
    """Each series' element: its polyline, or its circle for a single point."""
    return [e for e in root.iter() if "data-series" in e.attrib]


def coordinates(line: ET.Element) -> list[tuple[float, float]]:
    if line.tag == f"{SVG}circle":
        return [(float(line.get("cx")), float(line.get("cy")))]
    return [tuple(map(float, pair.split(","))) for pair in line.get("points").split()]


def labels(root: ET.Element, axis: str) -> list[str]:
    group = root.find(f"{SVG}g[@class='{axis}']")
    assert group is not None
    return [text.text for text in group.iter(f"{SVG}text")]


def texts(root: ET.Element) -> list[str]:
    return [text.text for text in root.iter(f"{SVG}text")]


def assert_inside(root: ET.Element) -> None:
    """Every series' point is a finite coordinate within the drawing."""
    width, height = float(root.get("width")), float(root.get("height"))
    for line in lines(root):
        for x, y in coordinates(line):
            assert math.isfinite(x) and math.isfinite(y)
            assert 0 <= x <= width and 0 <= y <= height


def test_a_falling_loss_is_one_line_that_goes_down_the_page():
    points = [(step, 2.0 * 0.9**step) for step in range(30)]
    random.Random(1).shuffle(points)  # any order: drawn sorted by step
    root = parse(line_chart([Series("loss", points)], title="Training loss",
                            x_label="step", y_label="loss"))

    (line,) = lines(root)
    assert line.tag == f"{SVG}polyline"
    assert line.get("data-series") == "loss" and line.get("data-points") == "30"
    drawn = coordinates(line)
    assert len(drawn) == 30
    assert [x for x, _ in drawn] == sorted(x for x, _ in drawn)
    # the first loss, the highest, is highest on the page: the smallest y (SVG's y grows down)
    assert drawn[0][1] < drawn[-1][1]
    assert drawn[0][1] == min(y for _, y in drawn)
    assert_inside(root)
    assert root.find(f"{SVG}g[@class='legend']") is None  # one series: no legend
    assert "step" in texts(root) and "loss" in texts(root)


def test_the_svg_says_what_it_is():
    root = parse(line_chart([Series("a", [(0, 1), (1, 2)])], title="Queue & wait",
                            width=320, height=120))
    assert root.get("role") == "img"
    assert root.get("aria-label") == "Queue & wait"
    assert root.find(f"{SVG}title").text == "Queue & wait"
    assert root.get("class") == "chart"
    assert (root.get("width"), root.get("height"), root.get("viewBox")) == (
        "320", "120", "0 0 320 120")


def test_two_series_two_colours_and_a_legend():
    p50 = Series("p50", [(m, 2 + m % 3) for m in range(10)])
    p95 = Series("p95", [(m, 8 + m % 5) for m in range(10)])
    root = parse(line_chart([p50, p95], title="Wait (s)"))

    drawn = lines(root)
    assert [line.get("data-series") for line in drawn] == ["p50", "p95"]
    assert all(line.tag == f"{SVG}polyline" for line in drawn)
    assert [line.get("stroke") for line in drawn] == list(PALETTE[:2])
    legend = root.find(f"{SVG}g[@class='legend']")
    assert [text.text for text in legend.iter(f"{SVG}text")] == ["p50", "p95"]
    assert [rect.get("fill") for rect in legend.iter(f"{SVG}rect")] == list(PALETTE[:2])
    # p95 lies above p50 on the page at every minute
    for (_, low), (_, high) in zip(coordinates(drawn[0]), coordinates(drawn[1]), strict=True):
        assert high < low


def test_a_name_from_a_user_stays_text():
    name = "<script>alert(1)</script>"
    chart = line_chart([Series(name, [(0, 1), (1, 2)]), Series("b & 'c'", [(0, 3)])],
                       title=f'"{name}"', x_label=name, y_label=name, empty=name)
    assert "<script" not in str(chart)
    root = parse(chart)
    assert not [e for e in root.iter() if e.tag.endswith("script")]
    assert lines(root)[0].get("data-series") == name
    assert lines(root)[1].get("data-series") == "b & 'c'"
    assert texts(root).count(name) == 3  # the legend and the two axis labels
    assert root.get("aria-label") == f'"{name}"'

    empty = parse(line_chart([], title=name, empty=name))
    assert not [e for e in empty.iter() if e.tag.endswith("script")]
    assert texts(empty) == [name, name]  # the title shown, and the empty text


def test_control_characters_do_not_break_the_xml():
    root = parse(line_chart([Series("a\x00b\x1b", [(0, 1), (1, 2)])], title="t\x07"))
    assert lines(root)[0].get("data-series") == "ab"


@pytest.mark.parametrize("series", [
    [],
    [Series("a", [])],
    [Series("a", []), Series("b", [])],
    [Series("nan", [(math.nan, 1.0), (1.0, math.inf), (2.0, -math.inf)])],
])
def test_no_data_shows_the_empty_text(series):
    root = parse(line_chart(series, title="Images per minute", width=400, height=150,
                            empty="Nothing made in the last hour."))
    assert (root.get("width"), root.get("height")) == ("400", "150")
    assert root.find(f"{SVG}title").text == "Images per minute"
    (message,) = root.findall(f"{SVG}text[@class='chart-empty']")
    assert message.text == "Nothing made in the last hour."
    assert (message.get("x"), message.get("text-anchor")) == ("200", "middle")
    assert lines(root) == []


def test_nan_and_inf_are_skipped():
    points = [(0, 1.0), (1, math.nan), (2, 2.0), (math.inf, 3.0), (3, math.inf), (4, 4.0)]
    chart = line_chart([Series("a", points)], title="t")
    (line,) = lines(parse(chart))
    assert line.get("data-points") == "3"
    assert not re.search("nan|inf", str(chart), re.IGNORECASE)


@pytest.mark.parametrize("points", [
    [(5.0, 3.0)],
    [(0.0, 0.0)],
    [(1e9, -2.0)],
    [(i, 7.0) for i in range(10)],
    [(i, 0.0) for i in range(10)],
    [(i, -0.5) for i in range(10)],
    [(3.0, y) for y in range(5)],
])
def test_one_point_or_constant_values_give_a_drawable_chart(points):
    chart = line_chart([Series("a", points)], title="t")
    assert not re.search("nan|inf", str(chart), re.IGNORECASE)
    root = parse(chart)
    (line,) = lines(root)
    assert line.get("data-points") == str(len(points))
    assert line.tag == (f"{SVG}circle" if len(points) == 1 else f"{SVG}polyline")
    assert_inside(root)
    assert 4 <= len(labels(root, "y-axis")) <= 6


def test_one_point_on_a_time_axis():
    root = parse(line_chart([Series("a", [(time.time(), 3.0)])], title="t", x_is_time=True))
    assert_inside(root)
    assert labels(root, "x-axis")


@pytest.mark.parametrize(("top", "expected"), [
    (1.0, ["0", "0.2", "0.4", "0.6", "0.8", "1"]),
    (0.0123, ["0", "0.005", "0.01", "0.015"]),
    (12000, ["0", "5k", "10k", "15k"]),
    (97, ["0", "20", "40", "60", "80", "100"]),
    (3.2, ["0", "1", "2", "3", "4"]),
])
def test_y_ticks_are_nice_and_start_at_zero(top, expected):
    root = parse(line_chart([Series("a", [(0, top / 3), (1, top)])], title="t"))
    assert labels(root, "y-axis") == expected


def test_negative_values_are_covered():
    root = parse(line_chart([Series("a", [(0, -3.5), (1, 2.0)])], title="t"))
    ticks = [float(label) for label in labels(root, "y-axis")]
    assert ticks[0] <= -3.5 and ticks[-1] >= 2.0 and 0.0 in ticks
    assert 4 <= len(ticks) <= 6
    assert_inside(root)


def test_x_ticks():
    root = parse(line_chart([Series("loss", [(s, 1.0) for s in range(1, 1001)])], title="t"))
    assert labels(root, "x-axis") == ["200", "400", "600", "800", "1k"]


def test_compact_numbers():
    assert compact(0.0123) == "0.012"
    assert compact(12000) == "12k"
    assert compact(1234) == "1.2k"
    assert compact(-2500) == "-2.5k"
    assert compact(3_400_000) == "3.4M"
    assert compact(123) == "123"
    assert compact(0) == "0"
    assert compact(1500, 500) == "1.5k"
    assert compact(1000, 500) == "1k"
    assert compact(1e-17, 0.1) == "0"  # a float's crumb left from 3 * 0.1 - 0.3
    assert compact(0.30000000000000004, 0.1) == "0.3"


def test_time_axis_labels_are_the_local_clock():
    now = time.time()
    points = [(now - 60 * minute, minute % 7) for minute in range(60)]
    root = parse(line_chart([Series("images", points)], title="Images per minute",
                            x_is_time=True))
    shown = labels(root, "x-axis")
    assert 4 <= len(shown) <= 6
    assert all(re.fullmatch(r"\d\d:\d\d", label) for label in shown)
    hour = {time.strftime("%H:%M", time.localtime(now - s)) for s in range(0, 3601, 60)}
    assert set(shown) <= hour
    assert len(set(shown)) == len(shown)
    # ticks fall on round minutes of the local clock
    assert all(int(label[-2:]) % 5 == 0 for label in shown)
    assert_inside(root)


def test_a_template_puts_the_chart_in_as_it_is():
    chart = line_chart([Series("a & b", [(0, 1), (1, 2)])], title="x < y")
    page = jinja2.Environment(autoescape=True).from_string("<div>{{ chart }}</div>").render(
        chart=chart)
    assert page == f"<div>{chart}</div>"
    assert "a &amp; b" in page and "x &lt; y" in page and "&amp;amp;" not in page


def test_many_series_and_random_data_stay_well_formed():
    rng = random.Random(7)
    for _ in range(200):
        series = [Series(f"s{i}", [(rng.uniform(-1e6, 1e6) * rng.random() ** 8,
                                    rng.choice([rng.gauss(0, 10) ** 3, 0.0, math.nan]))
                                   for _ in range(rng.randrange(0, 6))])
                  for i in range(rng.randrange(1, 9))]
        chart = line_chart(series, title="r", width=rng.randrange(80, 900),
                           height=rng.randrange(60, 400))
        assert not re.search("nan|inf", str(chart), re.IGNORECASE)
        root = parse(chart)
        assert_inside(root)
        drawn = lines(root)
        if drawn:
            assert [line.get("data-series") for line in drawn] == [s.name for s in series]
            colours = [line.get("stroke") or line.get("fill") for line in drawn]
            assert colours == [PALETTE[i % len(PALETTE)] for i in range(len(series))]
            assert 4 <= len(labels(root, "y-axis")) <= 6
