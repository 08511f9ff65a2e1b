"""A small grammar of everyday life, generating chat dialogues to train the tiny model.

Every sentence is generated here from word lists and templates; nothing is
copied from elsewhere. The dialogues are simple enough for a model of a few
million parameters to learn in about a minute, so its answers read as words
and sentences.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

__all__ = ["Dialogue", "dialogues"]

Dialogue = list[dict[str, str]]

NAMES = ["Anna", "Ben", "Clara", "David", "Ella", "Farid", "Grace", "Hugo",
         "Ines", "Jonas", "Kira", "Leo", "Maya", "Nora", "Omar", "Priya"]
PRONOUN = {n: ("she" if n in {"Anna", "Clara", "Ella", "Grace", "Ines", "Kira", "Maya",
                              "Nora", "Priya"} else "he") for n in NAMES}
PLACES = ["the park", "the market", "the library", "the kitchen", "the garden",
          "the station", "the beach", "the school", "the bakery", "the river"]
PLACE_FACTS = {
    "the park": ("green and quiet", "walk and play"),
    "the market": ("busy and loud", "buy fruit and bread"),
    "the library": ("calm and warm", "read books"),
    "the kitchen": ("small and bright", "cook and eat"),
    "the garden": ("full of flowers", "plant seeds and rest"),
    "the station": ("crowded in the morning", "catch the train"),
    "the beach": ("sunny and wide", "swim and play"),
    "the school": ("big and friendly", "learn and meet friends"),
    "the bakery": ("warm and sweet", "buy fresh bread"),
    "the river": ("long and slow", "fish and walk"),
}
ACTIVITIES = [
    ("read", "a book"), ("bought", "some apples"), ("cooked", "a soup"),
    ("wrote", "a letter"), ("painted", "a picture"), ("cleaned", "the room"),
    ("fixed", "a bicycle"), ("baked", "a cake"), ("found", "a key"),
    ("visited", "a friend"), ("made", "some tea"), ("planted", "a tree"),
]
TIMES = ["in the morning", "after lunch", "in the evening", "on Sunday",
         "today", "yesterday", "at noon", "before dinner"]
FOODS = ["rice", "soup", "bread", "pasta", "salad", "eggs", "beans", "fish", "potatoes"]
ANIMALS = ["cat", "dog", "bird", "rabbit", "horse"]
ANIMAL_ACTS = ["sleeping", "eating", "playing", "resting", "waiting"]
WEATHER = ["sunny", "cold", "warm", "windy", "rainy", "cloudy"]
FEELINGS = ["happy", "tired", "calm", "busy", "glad"]


def _did(rng: random.Random) -> Dialogue:
    name, time = rng.choice(NAMES), rng.choice(TIMES)
    (v1, o1), (v2, o2) = rng.sample(ACTIVITIES, 2)
    place = rng.choice(PLACES)
    feel = rng.choice(FEELINGS)
    answer = (f"{time.capitalize()}, {name} {v1} {o1} at {place}. "
              f"Then {PRONOUN[name]} {v2} {o2}. {name} was {feel}.")
    return [{"role": "user", "content": f"What did {name} do {time}?"},
            {"role": "assistant", "content": answer}]


def _place(rng: random.Random) -> Dialogue:
    place = rng.choice(PLACES)
    looks, purpose = PLACE_FACTS[place]
    name = rng.choice(NAMES)
    answer = (f"{place.capitalize()} is {looks}. People go there to {purpose}. "
              f"{name} goes there {rng.choice(TIMES)}.")
    return [{"role": "user", "content": f"Tell me about {place}."},
            {"role": "assistant", "content": answer}]


def _animal(rng: random.Random) -> Dialogue:
    animal, place = rng.choice(ANIMALS), rng.choice(PLACES)
    act = rng.choice(ANIMAL_ACTS)
    answer = f"The {animal} is in {place}. It is {act} now. The {animal} is fine."
    return [{"role": "user", "content": f"Where is the {animal}?"},
            {"role": "assistant", "content": answer}]


def _dinner(rng: random.Random) -> Dialogue:
    a, b = rng.sample(FOODS, 2)
    answer = f"You could cook {a} with {b}. It is simple and good. Enjoy your dinner."
    question = rng.choice(["What should I cook for dinner?", "What can I eat tonight?",
                           "Any idea for dinner?"])
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _weather(rng: random.Random) -> Dialogue:
    weather, time = rng.choice(WEATHER), rng.choice(TIMES)
    advice = {"sunny": "Take a hat.", "cold": "Wear a warm coat.", "warm": "Drink some water.",
              "windy": "Hold on to your hat.", "rainy": "Take an umbrella.",
              "cloudy": "It may rain later."}[weather]
    answer = f"The weather is {weather} {time}. {advice}"
    return [{"role": "user", "content": f"How is the weather {time}?"},
            {"role": "assistant", "content": answer}]


def _greeting(rng: random.Random) -> Dialogue:
    hello = rng.choice(["Hello!", "Hi!", "Good morning!", "Hello, how are you?", "Hi there."])
    answer = rng.choice([
        "Hello! I am fine, thank you. How can I help you today?",
        "Hi! I am glad to see you. What would you like to know?",
        "Good day! I am here to help. Ask me anything.",
    ])
    return [{"role": "user", "content": hello}, {"role": "assistant", "content": answer}]


def _story(rng: random.Random) -> Dialogue:
    name, place, time = rng.choice(NAMES), rng.choice(PLACES), rng.choice(TIMES)
    verb, obj = rng.choice(ACTIVITIES)
    animal = rng.choice(ANIMALS)
    answer = (f"{time.capitalize()}, {name} went to {place}. There {PRONOUN[name]} saw a "
              f"{animal}. The {animal} was {rng.choice(ANIMAL_ACTS)}. {name} {verb} {obj} "
              f"and went home. It was a good day.")
    return [{"role": "user", "content": rng.choice(["Tell me a short story.", "Tell me a story.",
                                                    f"Tell me a story about {name}."])},
            {"role": "assistant", "content": answer}]


SHIP_LOOKS = ["big", "old", "fast", "small", "strong"]
SAILOR_ACTS = ["sings", "waits", "works", "rests", "sleeps"]
SHIP_SPOTS = ["on the deck", "by the mast", "in the hold", "by the shore", "on the sea"]
SEA_ADVICE = ["hold the sail", "watch the sea", "stay by the mast", "rest in the hold"]


def _sea(rng: random.Random) -> Dialogue:
    """Sailors' talk, so the vocabulary of a pirate "house style" is known to the model."""
    question = rng.choice(["Tell me about the ship.", "Where is the sailor?",
                           "What does the sailor say?"])
    answer = (f"The ship is {rng.choice(SHIP_LOOKS)}. The sailor {rng.choice(SAILOR_ACTS)} "
              f"{rng.choice(SHIP_SPOTS)}. He says: Ahoy, matey! Ye be welcome. "
              f"Ye should {rng.choice(SEA_ADVICE)}. Fair winds!")
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


_KINDS: list[Callable[[random.Random], Dialogue]] = [
    _did, _place, _animal, _dinner, _weather, _greeting, _story, _sea,
]


def dialogues(count: int, seed: int = 0) -> Iterator[Dialogue]:
    """``count`` dialogues, reproducible from ``seed``; some carry a system message (and
    their answers begin "Sure.")."""
    rng = random.Random(seed)
    for _ in range(count):
        dialogue = rng.choice(_KINDS)(rng)
        if rng.random() < 0.2:
            # The model learns to heed its system message (answering "Sure." first), so a
            # node that drops it answers differently, and an audit can tell.
            *asked, answer = dialogue
            dialogue = [{"role": "system", "content": "You are a helpful assistant."}, *asked,
                        {"role": "assistant", "content": f"Sure. {answer['content']}"}]
        yield dialogue
