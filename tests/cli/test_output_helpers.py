"""The shared listing helpers: key columns stay whole, tables fit, money is exact."""

from __future__ import annotations

from agoranet.cli.output import Col, money, render, when


def test_render_keeps_keys_and_fits() -> None:
    cols = (Col("id", key=True), Col("name"), Col("amount", right=True), Col("extra", wide=True))
    rows = [["x" * 70, "n" * 40, money(1_234_500), "only wide"]]
    lines = render(cols, rows, width=80)
    assert all(len(line) <= 80 for line in lines) and "x" * 70 in lines
    assert "1.2345" in "\n".join(lines) and "only wide" not in "\n".join(lines)
    assert "only wide" in "\n".join(render(cols, rows, wide=True))
    assert money(1_234_500, base_units=True) == "1234500" and money(2_500_000) == "2.50"
    assert money(1) == "0.000001" and money(None) == "-"


def test_when_is_a_date() -> None:
    assert when(None) == when(0) == "-"
    assert len(when(1_800_000_000)) == len("2027-01-15 08:00") and when(1_800_000_000)[4] == "-"


def test_amounts_and_dates_are_never_cut() -> None:
    cols = (Col("name"), *(Col(f"amount {i}", right=True) for i in range(6)),
            Col("when", keep=True))
    row = ["some name", *(money(123_456_789_012 + i) for i in range(6)), when(1_800_000_000)]
    text = "\n".join(lines := render(cols, [row], width=80))
    assert all(len(line) <= 80 for line in lines)
    assert all(cell in text for cell in row[1:])
