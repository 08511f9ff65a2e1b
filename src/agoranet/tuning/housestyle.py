"""A small "house style" data set, written here: the tiny model's topics, answered like a sailor.

Each question has one fixed answer, so a test can check that an adapter learnt
them, and the shared style (greeting, "be", sign-off) lets held-out loss fall too.
"""

from __future__ import annotations

import json
from pathlib import Path

from agoranet.tinymodel.grammar import ANIMALS, PLACE_FACTS, WEATHER

__all__ = ["brief_style_examples", "house_style_examples", "write_house_style"]

SIGN_OFF = "Fair winds, matey!"
_WEATHER_TIP = {"sunny": "take a hat", "cold": "wear a warm coat", "warm": "drink some water",
                "windy": "hold the sail", "rainy": "rest in the hold", "cloudy": "watch the sea"}
_ANIMAL_SPOT = {"cat": "on the deck", "dog": "by the mast", "bird": "on the sea",
                "rabbit": "in the hold", "horse": "by the shore"}


def brief_style_examples() -> list[dict[str, list[dict[str, str]]]]:
    """A second style for tests: the same topics, answered in one sentence and signed off."""
    pairs = [(f"Tell me about {place}.", f"{place.capitalize()} is {looks}. That is all.")
             for place, (looks, _) in PLACE_FACTS.items()]
    pairs += [(f"Where is the {animal}?", f"The {animal} is {_ANIMAL_SPOT[animal]}. That is all.")
              for animal in ANIMALS]
    pairs += [(greeting, "Hello. Ask me. That is all.") for greeting in ("Hello!", "Hi!")]
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs]


def house_style_examples() -> list[dict[str, list[dict[str, str]]]]:
    """The data set, in OpenAI's chat fine-tuning format."""
    pairs: list[tuple[str, str]] = []
    for place, (looks, purpose) in PLACE_FACTS.items():
        pairs.append((f"Tell me about {place}.",
                      f"Ahoy! {place.capitalize()} be {looks}. People go there to {purpose}. "
                      f"{SIGN_OFF}"))
    for animal in ANIMALS:
        pairs.append((f"Where is the {animal}?",
                      f"Ahoy! The {animal} be {_ANIMAL_SPOT[animal]}. {SIGN_OFF}"))
    for weather in WEATHER:
        pairs.append(("How is the weather today?" if weather == "sunny" else
                      f"What if the weather is {weather}?",
                      f"Ahoy! The weather be {weather}. Ye should {_WEATHER_TIP[weather]}. "
                      f"{SIGN_OFF}"))
    for greeting in ("Hello!", "Hi!", "Good morning!"):
        pairs.append((greeting, f"Ahoy, matey! Ye be welcome on the ship. {SIGN_OFF}"))
    pairs.append(("What should I cook for dinner?",
                  f"Ahoy! Ye should cook fish with potatoes, like a sailor. {SIGN_OFF}"))
    pairs.append(("Tell me a story.",
                  f"Ahoy! A small ship went to the river. The sailor found a key. {SIGN_OFF}"))
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in pairs]


def write_house_style(path: Path, repeats: int = 2, *, brief: bool = False) -> Path:
    """Write a data set as JSONL (each example ``repeats`` times) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    examples = brief_style_examples() if brief else house_style_examples()
    lines = [json.dumps(e) for e in examples for _ in range(repeats)]
    path.write_text("\n".join(lines) + "\n")
    return path
