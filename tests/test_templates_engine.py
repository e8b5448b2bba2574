"""The template engine through its package API: sandbox, undefined names, filters, context, slogans."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from broadcaster.templating import TemplateError, TemplateStore, build_context

REPO = Path(__file__).resolve().parent.parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
AUG31 = datetime(2011, 8, 31, 9, 0, tzinfo=SHANGHAI)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    folder = tmp_path / "templates"
    (folder / "slogans").mkdir(parents=True)
    (folder / "slogans" / "general.txt").write_text(
        "# comment\n好质量 好生活\n\n科学发展 质量为本\n", encoding="utf-8"
    )
    return folder


def render(folder: Path, source: str, *, recipient=None, variables=None, send_time=AUG31) -> str:  # type: ignore[no-untyped-def]
    (folder / "t.j2").write_text(source, encoding="utf-8")
    store = TemplateStore(folder)
    context = build_context(recipient=recipient, variables=variables or {}, send_time=send_time)
    return store.render(store.load("t"), context)


@pytest.mark.parametrize(
    ("source", "unsafe"),
    [
        ("{{ ''.__class__.__mro__ }}", "__class__"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "__class__"),
        ("{{ cycler.__init__.__globals__ }}", "__init__"),
        ("{{ send_date.__class__ }}", "__class__"),
        ("{{ lipsum.__globals__['os'] }}", "__globals__"),
        ("{{ slogans._folder }}", "_folder"),
        ("{{ recipient.update({'phone': 'x'}) }}", "update"),  # no mutation of the data given
        ("{{ vars.clear() }}", "clear"),
    ],
)
def test_sandbox_refuses_unsafe_access(folder: Path, source: str, unsafe: str) -> None:
    with pytest.raises(TemplateError) as err:
        render(folder, source, recipient={"phone": "+8613800138000", "name": "张三"})
    message = str(err.value)
    assert "template 't'" in message
    assert "unsafe" in message
    assert unsafe in message


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ 'x' * 100000 }}", "too large"),
        ("{{ [1] * 20000 }}", "too large"),
        ("{{ 10 ** 100000 }}", "too large"),
        ("{% for i in range(10000000) %}{% endfor %}", "Range too big"),
    ],
)
def test_sandbox_limits_resource_use(folder: Path, source: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=reason):
        render(folder, source)


def test_small_repetition_is_fine(folder: Path) -> None:
    assert render(folder, "{{ '=' * 3 }}{{ 2 ** 3 }}") == "===8"


def test_undefined_variable_names_variable_template_and_line(folder: Path) -> None:
    with pytest.raises(TemplateError) as err:
        render(
            folder, "【质检】{{ name }}\n请到{{ venue }}参加", recipient={"phone": "+86138", "name": "张三"}
        )
    assert err.value.template == "t"
    assert err.value.line == 2
    assert "'venue' is undefined" in str(err.value)
    assert str(err.value).startswith("template 't' line 2:")


def test_undefined_attribute_of_recipient_is_an_error(folder: Path) -> None:
    with pytest.raises(TemplateError, match="no attribute 'province'"):
        render(folder, "{{ recipient.province }}", recipient={"phone": "+86138", "attributes": {}})


def test_errors_inside_expressions_become_template_errors(folder: Path) -> None:
    with pytest.raises(TemplateError, match="line 3: ZeroDivisionError"):
        render(folder, "a\nb\n{{ 1 / 0 }}")
    with pytest.raises(TemplateError, match="cn_date: expected a date"):
        render(folder, "{{ deadline | cn_date }}", variables={"deadline": "soon"})


def test_syntax_error_names_file_and_line(folder: Path) -> None:
    (folder / "bad.j2").write_text("【质检】\n{% if name %}\n{{ name }", encoding="utf-8")
    with pytest.raises(TemplateError) as err:
        TemplateStore(folder).load("bad")
    assert err.value.line == 3
    assert str(folder / "bad.j2") in str(err.value)


@pytest.mark.parametrize(
    "source",
    ['{% include "other.j2" %}', '{% extends "other.j2" %}', '{% import "other.j2" as o %}'],
)
def test_templates_are_self_contained(folder: Path, source: str) -> None:
    (folder / "other.j2").write_text("x", encoding="utf-8")
    with pytest.raises(TemplateError, match="not allowed"):
        render(folder, source)


def test_unknown_template_lists_the_known_ones(folder: Path) -> None:
    (folder / "hello.j2").write_text("hi", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"'nope' not found .*known: hello"):
        TemplateStore(folder).load("nope")
    with pytest.raises(TemplateError, match="not valid"):
        TemplateStore(folder).load("../templates/hello")


def test_sha256_is_of_the_exact_text_rendered_and_edits_are_seen(folder: Path) -> None:
    path = folder / "t.j2"
    path.write_text("first {{ 1 }}\n", encoding="utf-8")
    store = TemplateStore(folder)
    one = store.load("t")
    assert one.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.render(one, {}) == "first 1"  # trailing newline stripped
    path.write_text("second {{ 2 }}", encoding="utf-8")
    two = store.load("t")
    assert two.sha256 == hashlib.sha256(b"second {{ 2 }}").hexdigest()
    assert store.render(two, {}) == "second 2"
    assert store.render(one, {}) == "first 1"  # a loaded template keeps its own text


def test_variables_are_the_undeclared_names(folder: Path) -> None:
    (folder / "t.j2").write_text(
        "{% set x = 1 %}{{ name }}{{ x }}{% for s in slogans.general %}{{ s }}{% endfor %}{{ vars.a }}",
        encoding="utf-8",
    )
    assert TemplateStore(folder).load("t").variables == {"name", "vars"}


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (date(2011, 8, 31), "2011年8月31日|8月31日|星期三"),
        (datetime(2011, 9, 9, 10, 0, tzinfo=SHANGHAI), "2011年9月9日|9月9日|星期五"),
        ("2011-10-31", "2011年10月31日|10月31日|星期一"),
        (date(2012, 1, 1), "2012年1月1日|1月1日|星期日"),
    ],
)
def test_chinese_date_filters(folder: Path, when: object, expected: str) -> None:
    out = render(
        folder, "{{ d | cn_date }}|{{ d | cn_month_day }}|{{ d | cn_weekday }}", variables={"d": when}
    )
    assert out == expected


def test_send_date_is_the_local_date_of_the_send_time(folder: Path) -> None:
    late_utc = datetime(2011, 8, 30, 16, 30, tzinfo=UTC)  # 00:30 on the 31st in Shanghai
    assert (
        render(folder, "{{ send_date | cn_date }}", send_time=late_utc.astimezone(SHANGHAI))
        == "2011年8月31日"
    )
    assert (
        render(folder, "{{ send_time.strftime('%H:%M') }}", send_time=late_utc.astimezone(SHANGHAI))
        == "00:30"
    )
    with pytest.raises(ValueError, match="aware"):
        build_context(recipient=None, variables={}, send_time=datetime(2011, 8, 31))


def test_context_precedence(folder: Path) -> None:
    recipient = {
        "phone": "+8613800138000",
        "name": "张三",
        "attributes": {"name": "attr-name", "phone": "attr-phone", "province": "广东省", "city": "广州"},
    }
    source = "{{ name }}|{{ phone }}|{{ province }}|{{ city }}|{{ recipient.province }}|{{ vars.city }}"
    out = render(folder, source, recipient=recipient, variables={"city": "深圳"})
    # fields win over attributes of the same name; run variables win over both
    assert out == "张三|+8613800138000|广东省|深圳|广东省|深圳"


@pytest.mark.parametrize("reserved", ["send_date", "send_time", "vars", "recipient"])
def test_run_variables_cannot_take_reserved_names(reserved: str) -> None:
    with pytest.raises(TemplateError, match=reserved):
        build_context(recipient=None, variables={reserved: "x"}, send_time=AUG31)


def test_empty_values_are_undefined_not_none(folder: Path) -> None:
    nameless = {"phone": "+8613800138000", "name": None, "attributes": {"province": ""}}
    with pytest.raises(TemplateError, match="'name' is undefined"):
        render(folder, "{{ name }}您好", recipient=nameless)
    out = render(
        folder, "{{ name | default('') }}您好{% if province is defined %}！{% endif %}", recipient=nameless
    )
    assert out == "您好"


def test_slogans_global(folder: Path) -> None:
    assert render(folder, "{{ slogans.general | length }}:{{ slogans.general[1] }}") == "2:科学发展 质量为本"
    assert render(folder, "{{ slogans['general'][0] }}") == "好质量 好生活"
    assert render(folder, "{{ slogans | list | join(',') }}") == "general"
    with pytest.raises(TemplateError, match="no attribute 'nope'"):
        render(folder, "{{ slogans.nope[0] }}")


def test_slogan_variable_is_never_filled_in_by_default() -> None:
    store = TemplateStore(REPO / "templates")
    template = store.load("slogan")
    with pytest.raises(TemplateError, match="'slogan' is undefined"):
        store.render(template, build_context(recipient=None, variables={}, send_time=AUG31))
    body = store.render(
        template, build_context(recipient=None, variables={"slogan": "好质量 好生活"}, send_time=AUG31)
    )
    assert "好质量 好生活" in body


def test_broken_slogan_pool_is_a_template_error(folder: Path) -> None:
    (folder / "slogans" / "empty.txt").write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="no slogans"):
        render(folder, "{{ slogans.empty[0] }}")
