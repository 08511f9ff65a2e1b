from hypothesis import given
from hypothesis import strategies as st

from agoranet.engines.stops import StopMatcher


def run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_split_across_pieces_is_cut_before_the_stop() -> None:
    assert run(["END"], ["hello E", "N", "D more"]) == ("hello ", True)


def test_partial_prefix_that_does_not_complete_is_released() -> None:
    assert run(["END"], ["a E", "Nx"]) == ("a ENx", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["at", "he"], ["the cat"]) == ("t", True)


@given(st.text(alphabet="abcX", max_size=40), st.lists(st.integers(1, 5), max_size=10))
def test_matches_a_whole_text_search(text: str, cuts: list[int]) -> None:
    pieces, i = [], 0
    for cut in cuts:
        pieces.append(text[i : i + cut])
        i += cut
    pieces.append(text[i:])
    emitted, stopped = run(["Xa", "bc"], pieces)
    hits = [j for j in (text.find("Xa"), text.find("bc")) if j >= 0]
    if hits:
        assert stopped and emitted == text[: min(hits)]
    else:
        assert not stopped and emitted == text
