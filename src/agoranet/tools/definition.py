"""A paid tool: a plain typed Python function, its JSON schemas and its price.

:meth:`Tool.from_function` reads the function's signature: each parameter (with its
type hint and default) becomes a property of the input JSON schema, through a pydantic
model that also validates the arguments of a call (unknown arguments are refused); the
return annotation gives the output schema. A result that is not a JSON object is
wrapped as ``{"result": value}`` (MCP's structured content is an object).

The price is an integer number of base units per call, or a function of the validated
arguments (``lambda args: len(args["text"]) * 2``: per input character) that returns
one. A tool of another MCP server (:mod:`agoranet.tools.upstream`) has no function:
:meth:`Tool.from_schema` takes its schemas as they are, and its arguments are checked
against its input schema with ``jsonschema``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jsonschema
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from agoranet.errors import ConfigError, InvalidRequestError, ToolFailedError
from agoranet.payments.accept.ledger import MAX_AMOUNT

__all__ = ["MAX_NAME", "Price", "Tool", "ToolCall", "wrap_output"]

# A price: base units per call, or a function of the validated arguments.
Price = int | Callable[[Mapping[str, Any]], int]
# What runs a tool: the validated arguments in, a JSON value out.
ToolCall = Callable[[dict[str, Any]], Awaitable[Any]]
MAX_NAME: Final = 64
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def wrap_output(schema: dict[str, Any] | None) -> tuple[dict[str, Any] | None, bool]:
    """The output schema as MCP takes it (an object), and whether results are wrapped."""
    if schema is None or schema.get("type") == "object":
        return schema, False
    return {"type": "object", "properties": {"result": schema}, "required": ["result"]}, True


@dataclass(frozen=True)
class Tool:
    """One paid tool: its name, description, schemas, price and how it runs."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    price: Price
    run: ToolCall
    wrapped: bool = False  # the result is sent as {"result": value}
    # For a price computed from the arguments: the most one call may cost (None: no bound).
    max_price: int | None = None
    _validate: Callable[[dict[str, Any]], dict[str, Any]] = field(repr=False, default=dict)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > MAX_NAME or not set(self.name) <= _NAME_CHARS:
            raise ConfigError(f"tool name {self.name!r}: use 1 to {MAX_NAME} letters, digits, "
                              "'_', '-' or '.'")
        for what, amount in (("price", self.price), ("max_price", self.max_price)):
            if amount is None or callable(amount):
                continue
            if isinstance(amount, bool) or not isinstance(amount, int) or \
                    not 0 <= amount <= MAX_AMOUNT:
                raise ConfigError(f"tool {self.name}: the {what} must be an integer number of "
                                  f"base units from 0 to {MAX_AMOUNT}, not {amount!r}")
        if self.max_price is not None and not callable(self.price):
            raise ConfigError(f"tool {self.name}: max_price is for a price computed from the "
                              "arguments")

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, price: Price, name: str | None = None,
                      description: str | None = None, max_price: int | None = None) -> Tool:
        """A tool from a typed function (sync or async); its docstring is the default
        description. Every parameter needs a type hint; ``*args``/``**kwargs`` are refused."""
        tool_name = name or fn.__name__
        hints = typing.get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise ConfigError(f"tool {tool_name}: parameter {param.name} must be a plain "
                                  "named parameter")
            if param.name not in hints:
                raise ConfigError(f"tool {tool_name}: parameter {param.name} has no type hint")
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (hints[param.name], default)
        model: type[BaseModel] = create_model(
            f"{tool_name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
        returns = hints.get("return", Any)
        output: TypeAdapter[Any] | None = None
        output_schema: dict[str, Any] | None = None
        if returns is not type(None):
            output = TypeAdapter(returns)
            output_schema = output.json_schema(mode="serialization")
        schema, wrapped = wrap_output(output_schema)
        is_async = inspect.iscoroutinefunction(fn)

        def validate(arguments: dict[str, Any]) -> dict[str, Any]:
            try:  # as JSON, strictly: "5" is no integer
                parsed = model.model_validate_json(json.dumps(arguments), strict=True)
            except ValidationError as exc:
                raise InvalidRequestError(_plain(tool_name, exc)) from None
            return {key: getattr(parsed, key) for key in fields}

        async def run(arguments: dict[str, Any]) -> Any:
            if is_async:
                result = await fn(**arguments)
            else:  # a plain function may block: off the event loop
                result = await asyncio.to_thread(fn, **arguments)
            if output is None:
                return None
            try:
                return output.dump_python(output.validate_python(result), mode="json")
            except ValidationError as exc:
                raise ToolFailedError(f"tool {tool_name} returned what its output schema "
                                      f"refuses: {_plain(tool_name, exc)}; nothing was charged") from None

        return cls(tool_name, description if description is not None else
                   inspect.cleandoc(fn.__doc__ or ""), model.model_json_schema(), schema, price,
                   run, wrapped, max_price, validate)

    @classmethod
    def from_schema(cls, name: str, description: str, input_schema: dict[str, Any],
                    output_schema: dict[str, Any] | None, price: Price,
                    run: ToolCall) -> Tool:
        """A tool whose arguments are checked against ``input_schema`` (JSON Schema)."""
        try:
            checker = jsonschema.validators.validator_for(input_schema)(input_schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(f"tool {name}: its input schema is not valid JSON Schema: "
                              f"{exc.message}") from None

        def validate(arguments: dict[str, Any]) -> dict[str, Any]:
            error = jsonschema.exceptions.best_match(checker.iter_errors(arguments))
            if error is not None:
                where = ".".join(str(p) for p in error.absolute_path) or "arguments"
                raise InvalidRequestError(f"bad arguments for {name}: '{where}': "
                                          f"{error.message}")
            return arguments

        return cls(name, description, input_schema, output_schema, price, run, False, None,
                   validate)

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The arguments, checked against the input schema (InvalidRequestError if not)."""
        return self._validate(arguments)

    def price_of(self, arguments: Mapping[str, Any]) -> int:
        """The price of a call with these (validated) arguments, in base units."""
        if not callable(self.price):
            return self.price
        try:
            amount = self.price(arguments)
        except Exception as exc:  # the seller's pricing function: its failure is ours
            raise ToolFailedError(f"tool {self.name}: its price could not be computed "
                                  f"({type(exc).__name__}: {exc}); nothing was charged"
                                  ) from None
        if isinstance(amount, bool) or not isinstance(amount, int) or \
                not 0 <= amount <= MAX_AMOUNT:
            raise ToolFailedError(f"tool {self.name}: its pricing function gave {amount!r}, "
                                  f"not an integer from 0 to {MAX_AMOUNT}; nothing was charged")
        if self.max_price is not None and amount > self.max_price:
            raise ToolFailedError(f"tool {self.name}: this call would cost {amount}, above "
                                  f"the most it states ({self.max_price}); nothing was charged")
        return amount

    def structured(self, result: Any) -> Any:
        """The result as it goes out (an object: wrapped if the schema says so)."""
        return {"result": result} if self.wrapped else result


def _plain(name: str, exc: ValidationError) -> str:
    """Pydantic's report on arguments, as one line a person reads."""
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "arguments"
        problems.append(f"'{where}': {error['msg'].rstrip('.')}")
    return f"bad arguments for {name}: {'; '.join(problems)}"
