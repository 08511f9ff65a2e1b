"""Dialogues with tools, to teach the tiny model the Hermes tool-call format.

Each sample offers a few function tools (in OpenAI's wire form) and is one of:

- a question one of the offered tools answers: the assistant calls it
  (``tool_calls``, no text), with arguments taken from the question;
- two such questions in one: two calls in one answer (parallel calls);
- a call already made and its result (a ``tool`` message): the assistant answers in words;
- a question no offered tool answers: a plain answer from the everyday grammar.

Like :mod:`agoranet.tinymodel.grammar`, everything is generated from word lists and
templates, reproducibly from a seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agoranet.tinymodel.grammar import FOODS, NAMES, WEATHER, dialogues

__all__ = ["TOOLS", "ToolSample", "tool_samples"]

CITIES = ["Paris", "Rome", "Berlin", "Madrid", "London", "Oslo", "Vienna", "Lisbon",
          "Tokyo", "Cairo", "Dublin", "Prague"]
ZONES = {"utc": "UTC", "cet": "CET", "pst": "PST"}
MESSAGES = ["see you at the park", "I am on the train", "dinner is ready",
            "the cake is in the kitchen", "call me after lunch", "I found the key"]


def _function(name: str, description: str, properties: dict[str, Any],
              required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required,
                       "additionalProperties": False}}}


TOOLS: dict[str, dict[str, Any]] = {
    "get_weather": _function("get_weather", "Weather", {
        "city": {"type": "string", "maxLength": 40},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["celsius", "fahrenheit"]}}, ["city", "days"]),
    "get_time": _function("get_time", "The time in a zone", {
        "zone": {"enum": sorted(ZONES)}}, ["zone"]),
    "find_recipe": _function("find_recipe", "Find a recipe", {
        "food": {"type": "string"}}, ["food"]),
    "send_message": _function("send_message", "Send a message to a friend", {
        "to": {"type": "string"}, "text": {"type": "string"}}, ["to", "text"]),
}

Call = tuple[str, dict[str, Any]]
Ask = tuple[str, Call, str, str]  # question, the call answering it, its result, the answer


def _weather(rng: random.Random) -> Ask:
    city, days = rng.choice(CITIES), rng.choice([1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7])
    arguments: dict[str, Any] = {"city": city, "days": days}
    if days == 1:
        question = rng.choice([f"What is the weather in {city}?",
                               f"How is the weather in {city} today?",
                               f"Will it rain in {city}?"])
    else:
        question = rng.choice([f"What is the weather in {city} for {days} days?",
                               f"How will the weather be in {city} in the next {days} days?"])
    if rng.random() < 0.25:
        arguments["unit"] = unit = rng.choice(["celsius", "fahrenheit"])
        question = question[:-1] + f" in {unit}?"
    weather = rng.choice(WEATHER)
    return question, ("get_weather", arguments), weather, f"The weather in {city} is {weather}."


def _time(rng: random.Random) -> Ask:
    zone = rng.choice(sorted(ZONES))
    question = rng.choice([f"What time is it in {ZONES[zone]}?",
                           f"What is the time in {ZONES[zone]} now?"])
    hour = f"{rng.randint(1, 12)} o'clock"
    return question, ("get_time", {"zone": zone}), hour, f"It is {hour} in {ZONES[zone]}."


def _recipe(rng: random.Random) -> Ask:
    food = rng.choice(FOODS)
    question = rng.choice([f"Find me a recipe with {food}.", f"How do I cook {food}?"])
    return (question, ("find_recipe", {"food": food}), f"{food} with {rng.choice(FOODS)}",
            f"Here is a recipe with {food}. Enjoy it.")


def _message(rng: random.Random) -> Ask:
    name, text = rng.choice(NAMES), rng.choice(MESSAGES)
    question = rng.choice([f"Send a message to {name}: {text}.",
                           f"Tell {name} that {text}."])
    return (question, ("send_message", {"to": name, "text": text}), "sent",
            f"I sent the message to {name}.")


_ASKS: dict[str, Callable[[random.Random], Ask]] = {
    "get_weather": _weather, "get_time": _time, "find_recipe": _recipe,
    "send_message": _message,
}


@dataclass(frozen=True)
class ToolSample:
    """One training dialogue and the tools it offers."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]


def _calls(calls: list[Call], rng: random.Random) -> list[dict[str, Any]]:
    return [{"id": f"call_{rng.randrange(16**8):08x}", "type": "function",
             "function": {"name": name, "arguments": arguments}} for name, arguments in calls]


def _sample(rng: random.Random, plain: Iterator[list[dict[str, str]]]) -> ToolSample:
    names = rng.sample(sorted(TOOLS), rng.randint(1, 3))
    tools = [TOOLS[n] for n in names]
    roll = rng.random()
    if roll < 0.2:  # nothing to call: a plain answer, as without tools
        return ToolSample(list(next(plain)), tools)
    first = _ASKS[rng.choice(names)](rng)
    if roll < 0.35:  # two questions, two calls
        second = _ASKS[rng.choice(names)](rng)
        if second[1] == first[1]:
            second = first
        if second is not first:
            question = f"{first[0]} And {second[0][0].lower()}{second[0][1:]}"
            return ToolSample([{"role": "user", "content": question},
                               {"role": "assistant", "content": "",
                                "tool_calls": _calls([first[1], second[1]], rng)}], tools)
    question, call, result, answer = first
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "", "tool_calls": _calls([call], rng)}]
    if roll < 0.55:  # the result came back: answer in words
        messages += [{"role": "tool", "tool_call_id": messages[1]["tool_calls"][0]["id"],
                      "content": result},
                     {"role": "assistant", "content": answer}]
    return ToolSample(messages, tools)


def tool_samples(count: int, seed: int = 0) -> Iterator[ToolSample]:
    """``count`` tool dialogues, reproducible from ``seed``."""
    rng = random.Random(f"tools-{seed}")
    plain = dialogues(count, seed=seed + 1)
    for _ in range(count):
        yield _sample(rng, plain)
