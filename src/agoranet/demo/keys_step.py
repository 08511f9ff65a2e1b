"""Demo step: an agent's key hands a sub-agent a budget; the sub-agent works until its cap.

The owner gives the agent "butler" a key; the butler asks one question and, over the
gateway's ``POST /agoranet/keys`` as any agent would, mints its sub-agent "scout" a key
worth about five such answers. The scout asks with its own key until the gateway
answers 429 ``insufficient_quota``; the key table (as ``agoranet keys list``) shows
what each key spent: the butler's spend includes its scout's, the owner's both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from agoranet.cli.output import money
from agoranet.errors import GatewayCallError

__all__ = ["BUTLER_BUDGET", "SCOUT_ANSWERS", "SCOUT_TASKS", "KeysScene", "keys_step"]

BUTLER_BUDGET: Final = 50_000  # 0.05 USDC, in base units
SCOUT_ANSWERS: Final = 5  # the scout's budget: about this many answers like the butler's
MAX_TOKENS: Final = 16
SCOUT_TASKS: Final = ("Tell me about the beach.", "What did Maya do yesterday?",
                      "Tell me about the market.", "Where is the cat?",
                      "What should I cook for dinner?", "Tell me a story about Omar.")
_MAX_REQUESTS: Final = 4 * SCOUT_ANSWERS  # the cap is reached long before


@dataclass(frozen=True)
class KeysScene:
    """What the scene did: the scout's budget, its answers' costs, the final refusal."""

    scout_budget: int
    costs: list[int]
    refusal: str


def _mint(root: str, key: str, name: str, budget: int) -> str:
    made = httpx.post(f"{root}/agoranet/keys", headers={"Authorization": f"Bearer {key}"},
                      json={"name": name, "budget": budget}, timeout=30)
    if made.status_code != 201:
        raise GatewayCallError(f"the gateway did not mint '{name}': {made.text[:300]}",
                               status=made.status_code)
    return str(made.json()["key"])


def _ask(client: Any, question: str) -> tuple[str, int]:
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": question}], temperature=0,
        max_tokens=MAX_TOKENS)
    return reply.choices[0].message.content or "", int((reply.model_extra or {})
                                                       ["agoranet"]["amount"])


def keys_step(gateway: str, owner_key: str, key_store: Path, console: Console) -> KeysScene:
    """The scene against a keyed gateway (its ``/v1`` URL) whose owner key is ``owner_key``."""
    from openai import OpenAI, RateLimitError

    from agoranet.cli.keys import table
    from agoranet.gateway.keystore import KeyStore

    root = gateway.removesuffix("/v1")
    butler = _mint(root, owner_key, "butler", BUTLER_BUDGET)
    console.print(f"the owner gives the agent [bold]butler[/] a key worth "
                  f"{money(BUTLER_BUDGET)} USDC")
    answer, cost = _ask(OpenAI(base_url=gateway, api_key=butler, max_retries=0),
                        "Tell me about the garden.")
    console.print(f"[bold cyan]butler:[/] Tell me about the garden.  [dim]→ {answer!r}, "
                  f"{money(cost)} USDC[/]")
    budget = SCOUT_ANSWERS * cost
    scout = _mint(root, butler, "scout", budget)
    console.print(f"butler mints its sub-agent [bold]scout[/] a key of its own worth "
                  f"{money(budget)} USDC, out of its budget (POST /agoranet/keys with "
                  "the butler's key)")
    client = OpenAI(base_url=gateway, api_key=scout, max_retries=0)
    costs: list[int] = []
    refusal = ""
    with Progress(TextColumn("scout's budget"), BarColumn(),
                  TextColumn("{task.fields[spent]} of {task.fields[budget]} USDC spent"),
                  console=console) as progress:
        bar = progress.add_task("scout", total=budget, spent=money(0),
                                budget=money(budget))
        for number in range(1, _MAX_REQUESTS + 1):
            question = SCOUT_TASKS[(number - 1) % len(SCOUT_TASKS)]
            try:
                answer, cost = _ask(client, question)
            except RateLimitError as exc:
                if exc.code != "insufficient_quota":
                    raise
                body = exc.body if isinstance(exc.body, dict) else {}
                refusal = str(body.get("message", exc))
                console.print(f"[bold cyan]scout #{number}:[/] {question}  [bold red]→ 429 "
                              f"insufficient_quota[/]: {refusal}")
                break
            costs.append(cost)
            progress.update(bar, completed=sum(costs), spent=money(sum(costs)))
            console.print(f"[bold cyan]scout #{number}:[/] {question}  [dim]→ {answer!r}, "
                          f"{money(cost)} USDC[/]")
        else:
            raise GatewayCallError(f"the scout spent {sum(costs)} of {budget} base units in "
                                   f"{len(costs)} answers without reaching its cap", status=200)
    console.print(f"the scout stopped at its cap after {len(costs)} answers: the gateway "
                  "refuses a request whose worst case its key cannot cover\n")
    console.print("[bold]agoranet keys list[/] (every amount in USDC):")
    store = KeyStore(key_store)
    try:
        for line in table(store.subtree()):
            console.print(line, highlight=False, markup=False)
    finally:
        store.close()
    return KeysScene(budget, costs, refusal)
