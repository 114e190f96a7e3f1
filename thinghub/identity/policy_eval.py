"""AWS IoT policy evaluation: may this connection CONNECT, PUBLISH, SUBSCRIBE, Receive, retain?

Pure code, in three stages with three lifetimes:

1. :func:`compile_policy` (once per policy version): the document's statements, their actions
   as a bit mask of the five MQTT actions below, their resources and condition values split
   into literal text and policy variables. Nothing about a connection is known yet.
2. :class:`Grants` (once per connection, built at CONNECT): the variables are resolved for
   this connection (client id, thing, certificate) and each action's resources become one
   matcher for the Allow statements and one for the Deny statements, built the first time the
   action is asked about.
3. :meth:`Grants.allows` (per request): one string built, at most two matches. The caller
   keeps the answers per topic (``auth/aws_device.py``), so a PUBLISH, SUBSCRIBE or delivery
   costs a dictionary look-up once a topic has been seen.

The rules (AWS IoT Core policies follow IAM's conventions):

* **Actions** ``iot:Connect``, ``iot:Publish``, ``iot:Subscribe``, ``iot:Receive``,
  ``iot:RetainPublish``, matched case-insensitively, with ``*`` and ``?`` wildcards
  (``iot:*``, ``*``, ``iot:Pub*``). Other actions (``iot:GetThingShadow`` ...) concern the
  HTTP APIs, where the hub's access keys are checked instead; they grant nothing here.
* **Resources** ARNs, compared case-sensitively with the one of the request::

      iot:Connect                          arn:aws:iot:{region}:{account}:client/{clientId}
      iot:Publish, Receive, RetainPublish  arn:aws:iot:{region}:{account}:topic/{topic}
      iot:Subscribe                        arn:aws:iot:{region}:{account}:topicfilter/{filter}

  ``*`` matches any run of characters (``/`` and nothing included), ``?`` one character;
  MQTT's ``+`` and ``#`` are plain characters. ``${*}``, ``${?}`` and ``${$}`` are literal
  ``*``, ``?`` and ``$``. An empty region or account field (``arn:aws:iot:::topic/x``) matches
  any, and a wildcard there matches within its field (never into the resource, which IAM's
  plain glob over the whole ARN would let a ``*`` do for a topic holding ``:``). A shared
  subscription is authorised as the filter it was sent as
  (``topicfilter/$share/{group}/{filter}``).
* **Policy variables** in a Resource or a condition value are replaced by the connection's
  values, which are literal text (a client id ``a*`` grants ``a*`` only, never ``ab``):
  ``iot:ClientId``; ``iot:Connection.Thing.ThingName``, ``.IsAttached`` (``true`` or
  ``false``), ``.Attributes[name]`` (the thing is the one the certificate is attached to
  exclusively, else the attached thing whose name is the client id); the certificate's
  ``iot:Certificate.Subject.*``, ``.Issuer.*`` (the attribute names of
  ``CERTIFICATE_ATTRIBUTES``) and ``iot:Certificate.SerialNumber``. A certificate value that
  holds a wildcard character is not substituted (AWS IoT's rule). A variable that does not
  resolve (no such attribute, no thing, an unknown name) makes its Resource entry match
  nothing; the statement's other entries still apply.
* **Conditions**: ``StringEquals``, ``StringNotEquals``, ``StringEqualsIgnoreCase``,
  ``StringNotEqualsIgnoreCase``, ``StringLike``, ``StringNotLike``, ``Bool``, ``Null``, each
  also with ``IfExists``, on the variables above as keys. They are judged once per connection
  (and again when an identity write has changed what they read: ``auth/aws_device.py``). A
  statement with any other operator or key (``IpAddress``, ``aws:SourceIp``,
  ``ForAllValues:...``) does not apply at all, whether it allows or denies: said in the
  README's limits.
* **Evaluation**: a matching Deny wins; else a matching Allow allows; else it is denied.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CERTIFICATE_ATTRIBUTES",
    "RESOURCE_TYPES",
    "Action",
    "CompiledPolicy",
    "Grants",
    "PolicyError",
    "compile_policy",
    "is_variable",
]


class PolicyError(ValueError):
    """A document that is not a policy (the store validates documents, so only damage)."""


class Action(enum.IntFlag):
    CONNECT = 1
    PUBLISH = 2
    SUBSCRIBE = 4
    RECEIVE = 8
    RETAIN_PUBLISH = 16


_ACTION_NAMES: Mapping[str, Action] = {
    "iot:connect": Action.CONNECT,
    "iot:publish": Action.PUBLISH,
    "iot:subscribe": Action.SUBSCRIBE,
    "iot:receive": Action.RECEIVE,
    "iot:retainpublish": Action.RETAIN_PUBLISH,
}
#: the resource type of each action's ARN
RESOURCE_TYPES: Mapping[Action, str] = {
    Action.CONNECT: "client",
    Action.PUBLISH: "topic",
    Action.SUBSCRIBE: "topicfilter",
    Action.RECEIVE: "topic",
    Action.RETAIN_PUBLISH: "topic",
}

#: the X.509 name attributes a ``iot:Certificate.Subject.*`` or ``.Issuer.*`` variable names
CERTIFICATE_ATTRIBUTES = frozenset(
    {
        "CommonName",
        "Country",
        "DistinguishedNameQualifier",
        "GenerationQualifier",
        "GivenName",
        "Initials",
        "Locality",
        "Organization",
        "OrganizationalUnit",
        "Pseudonym",
        "SerialNumber",
        "State",
        "Surname",
        "Title",
    }
)
_FIXED_VARIABLES = frozenset(
    {
        "iot:ClientId",
        "iot:Connection.Thing.ThingName",
        "iot:Connection.Thing.ThingTypeName",
        "iot:Connection.Thing.IsAttached",
        "iot:Certificate.SerialNumber",
    }
)
_ATTRIBUTE_VARIABLE = re.compile(r"iot:Connection\.Thing\.Attributes\[([^\]]+)\]")
_CERTIFICATE_VARIABLE = re.compile(r"iot:Certificate\.(Subject|Issuer)\.([A-Za-z]+)")
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_ESCAPES = {"*": "*", "?": "?", "$": "$"}

_OPERATORS = frozenset(
    {
        "StringEquals",
        "StringNotEquals",
        "StringEqualsIgnoreCase",
        "StringNotEqualsIgnoreCase",
        "StringLike",
        "StringNotLike",
        "Bool",
        "Null",
    }
)
_NEGATED = frozenset({"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike"})


def is_variable(name: str) -> bool:
    """Whether ``name`` is a policy variable (and condition key) the hub resolves."""
    if name in _FIXED_VARIABLES or _ATTRIBUTE_VARIABLE.fullmatch(name) is not None:
        return True
    found = _CERTIFICATE_VARIABLE.fullmatch(name)
    return found is not None and found.group(2) in CERTIFICATE_ATTRIBUTES


# ------------------------------------------------------------------------------ templates

# A template is text with policy variables: a tuple of parts, each a _Text (policy text, in
# which * and ? are wildcards), a _Char (a literal character from ${*}, ${?}, ${$}) or a _Var.


@dataclass(frozen=True, slots=True)
class _Text:
    text: str


@dataclass(frozen=True, slots=True)
class _Char:
    char: str


@dataclass(frozen=True, slots=True)
class _Var:
    name: str


_Part = _Text | _Char | _Var
Template = tuple[_Part, ...]
#: a variable's value for this connection, or None when it does not resolve
Lookup = Callable[[str], "str | None"]


def _template(raw: str) -> Template:
    parts: list[_Part] = []
    position = 0
    for found in _VARIABLE.finditer(raw):
        if found.start() > position:
            parts.append(_Text(raw[position : found.start()]))
        name = found.group(1)
        parts.append(_Char(_ESCAPES[name]) if name in _ESCAPES else _Var(name))
        position = found.end()
    if position < len(raw):
        parts.append(_Text(raw[position:]))
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class _Resource:
    """A Resource entry. An ARN of six fields whose first five hold no variable is split:
    ``head`` (``arn:aws:iot:{region}:{account}:``, wildcards allowed) is judged once per
    connection against the hub's own prefix, and ``tail`` (``topic/...``) against
    ``{type}/{name}``, so a connection's matchers are mostly exact names and prefixes, with
    no regular expression to compile per connection. Anything else (``*``, a shorter ARN, a
    variable in the region) is ``head`` None and ``tail`` the whole ARN."""

    head: str | None
    tail: Template


def _resource(raw: str) -> _Resource:
    """An empty region or account field of an IoT ARN matches any."""
    fields = raw.split(":", 5)
    if len(fields) == 6 and fields[0] == "arn" and fields[2] == "iot":
        fields[3] = fields[3] or "*"
        fields[4] = fields[4] or "*"
        head = ":".join(fields[:5]) + ":"
        if "${" not in head:
            return _Resource(head, _template(fields[5]))
        raw = ":".join(fields)
    return _Resource(None, _template(raw))


@functools.lru_cache(maxsize=256)
def _head_matches(head: str, prefix: str) -> bool:
    """Whether an ARN head (``arn:aws:iot:us-*:*:``) covers the hub's prefix. Its wildcards
    match within their field: a ``*`` of the account field never reaches into the resource
    (where IAM's plain glob would let it match a topic holding ``:``). Memoised: a pure
    function of two strings, and a hub has one prefix per account."""
    tokens = _tokens(_template(head), lambda _name: None) or []
    pattern = "".join(
        "[^:]*" if t is _STAR else "[^:]" if t is _ONE else re.escape(str(t)) for t in tokens
    )
    return re.fullmatch(pattern, prefix) is not None


def _variables_of(template: Template) -> Iterable[str]:
    return (part.name for part in template if isinstance(part, _Var))


# A resolved template: literal runs and wildcards, ("", "*") / ("", "?") for the wildcards.
_STAR, _ONE = object(), object()
_Token = str | object


def _tokens(template: Template, lookup: Lookup) -> list[_Token] | None:
    """The template with its variables replaced (their values literal), as literal strings and
    wildcard markers; None when a variable does not resolve."""
    tokens: list[_Token] = []
    for part in template:
        if isinstance(part, _Text):
            run: list[str] = []
            for char in part.text:
                if char == "*" or char == "?":
                    if run:
                        tokens.append("".join(run))
                        run = []
                    tokens.append(_STAR if char == "*" else _ONE)
                else:
                    run.append(char)
            if run:
                tokens.append("".join(run))
        elif isinstance(part, _Char):
            tokens.append(part.char)
        else:
            value = lookup(part.name)
            if value is None:
                return None
            tokens.append(value)
    return tokens


def _literal(template: Template, lookup: Lookup) -> str | None:
    """A condition value as plain text (wildcards are plain there, except in *Like)."""
    text: list[str] = []
    for part in template:
        if isinstance(part, _Text):
            text.append(part.text)
        elif isinstance(part, _Char):
            text.append(part.char)
        else:
            value = lookup(part.name)
            if value is None:
                return None
            text.append(value)
    return "".join(text)


def _regex_source(tokens: Sequence[_Token]) -> str:
    return "".join(
        ".*" if token is _STAR else "." if token is _ONE else re.escape(str(token))
        for token in tokens
    )


# ------------------------------------------------------------------------------ matchers


class _Matcher:
    """The resources of several statements for one action: exact names in a set, ``x*``
    prefixes in a tuple for ``str.startswith``, the rest in one alternation regex. It is
    given a resource ``{type}/{name}``, and the whole ARN only for the entries that are not
    split (``full``)."""

    __slots__ = ("everything", "exact", "full", "prefixes", "regex")

    def __init__(self, patterns: Iterable[list[_Token]], full: _Matcher | None = None) -> None:
        self.full = full
        self.everything = False
        exact: set[str] = set()
        prefixes: list[str] = []
        sources: list[str] = []
        for tokens in patterns:
            wild = [t for t in tokens if t is _STAR or t is _ONE]
            if not wild:
                exact.add("".join(str(t) for t in tokens))
            elif len(tokens) == 1 and tokens[0] is _STAR:
                self.everything = True
            elif wild == [_STAR] and tokens[-1] is _STAR:
                prefixes.append("".join(str(t) for t in tokens[:-1]))
            else:
                sources.append(_regex_source(tokens))
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.regex = (
            re.compile("|".join(f"(?:{s})" for s in sources), re.DOTALL) if sources else None
        )

    def __call__(self, resource: str) -> bool:
        if self.everything or resource in self.exact:
            return True
        if self.prefixes and resource.startswith(self.prefixes):
            return True
        regex = self.regex
        return regex is not None and regex.fullmatch(resource) is not None

    def matches(self, resource: str, prefix: str) -> bool:
        """``resource`` is ``{type}/{name}``; ``prefix`` the ARN before it."""
        if self(resource):
            return True
        full = self.full
        return full is not None and full(prefix + resource)


_NOTHING = _Matcher(())


# ------------------------------------------------------------------------------ documents


@dataclass(frozen=True, slots=True)
class _Condition:
    operator: str
    if_exists: bool
    key: str
    values: tuple[Template, ...]


@dataclass(frozen=True, slots=True)
class _Statement:
    allow: bool
    actions: int
    resources: tuple[_Resource, ...]
    conditions: tuple[_Condition, ...]


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A policy document's statements that concern MQTT (an empty tuple grants nothing)."""

    statements: tuple[_Statement, ...]
    #: variables its resources and conditions use (to read what they need only)
    variables: frozenset[str]
    #: statements left out: a condition this module does not evaluate
    unsupported: int = 0


def compile_policy(text: str) -> CompiledPolicy:
    """Compile a policy document (JSON text); raises :class:`PolicyError` if it is not one."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise PolicyError("the policy document is not JSON") from None
    if not isinstance(document, dict):
        raise PolicyError("the policy document is not a JSON object")
    raw = document.get("Statement")
    raw_statements = [raw] if isinstance(raw, dict) else raw
    if not isinstance(raw_statements, list):
        raise PolicyError("the policy document has no Statement")
    statements: list[_Statement] = []
    variables: set[str] = set()
    unsupported = 0
    for raw_statement in raw_statements:
        if not isinstance(raw_statement, dict):
            raise PolicyError("a statement is not a JSON object")
        effect = raw_statement.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise PolicyError(f"a statement's Effect is {effect!r}")
        actions = 0
        for pattern in _strings(raw_statement.get("Action")):
            actions |= _action_mask(pattern)
        if not actions:
            continue  # it concerns other actions only
        conditions = _conditions(raw_statement.get("Condition"))
        if conditions is None:
            unsupported += 1
            continue
        resources = tuple(_resource(r) for r in _strings(raw_statement.get("Resource")))
        for resource in resources:
            variables.update(_variables_of(resource.tail))
        for condition in conditions:
            variables.add(condition.key)
            for value in condition.values:
                variables.update(_variables_of(value))
        statements.append(_Statement(effect == "Allow", actions, resources, conditions))
    return CompiledPolicy(tuple(statements), frozenset(variables), unsupported)


def _strings(value: object) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise PolicyError("Action and Resource must be strings or lists of strings")
    return items


def _action_mask(pattern: str) -> int:
    """The MQTT actions an Action entry names (IAM matches action names case-insensitively)."""
    tokens = _tokens(_template(pattern.lower()), lambda _name: None) or []
    regex = re.compile(_regex_source(tokens), re.DOTALL)
    mask = 0
    for name, action in _ACTION_NAMES.items():
        if regex.fullmatch(name):
            mask |= action
    return mask


def _conditions(raw: object) -> tuple[_Condition, ...] | None:
    """The statement's conditions, or None when one of them is not supported."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise PolicyError("Condition must be an object")
    found: list[_Condition] = []
    for operator, tests in raw.items():
        base = operator.removesuffix("IfExists")
        if base not in _OPERATORS or not isinstance(tests, dict):
            return None
        for key, value in tests.items():
            if not is_variable(key):
                return None
            values = value if isinstance(value, list) else [value]
            texts: list[Template] = []
            for item in values:
                if isinstance(item, bool):
                    item = "true" if item else "false"
                if not isinstance(item, str):
                    return None
                texts.append(_template(item))
            found.append(_Condition(base, base != operator, key, tuple(texts)))
    return tuple(found)


# ------------------------------------------------------------------------------ grants


class Grants:
    """What one connection may do: compiled policies resolved with its variables.

    ``lookup(name)`` gives a variable's value (None: it does not resolve); it is called only
    for the variables the policies use, the first time an action needs them. ``prefix`` is
    ``arn:aws:iot:{region}:{account}:``."""

    __slots__ = ("_applies", "_lookup", "_prefix", "_rules", "_statements")

    def __init__(self, policies: Iterable[CompiledPolicy], lookup: Lookup, prefix: str) -> None:
        self._statements = tuple(s for p in policies for s in p.statements)
        self._lookup = lookup
        self._prefix = prefix
        # Per action, (deny, allow) matchers once built.
        self._rules: dict[Action, tuple[_Matcher, _Matcher]] = {}
        # Whether each statement's conditions hold for this connection, once judged.
        self._applies: dict[int, bool] = {}

    def allows(self, action: Action, name: str) -> bool:
        """May the connection do ``action`` on the client id, topic or filter ``name``?"""
        rule = self._rules.get(action)
        if rule is None:
            rule = self._rules[action] = self._build(action)
        deny, allow = rule
        if allow is _NOTHING:
            return False
        resource = f"{RESOURCE_TYPES[action]}/{name}"
        prefix = self._prefix
        return not deny.matches(resource, prefix) and allow.matches(resource, prefix)

    def _build(self, action: Action) -> tuple[_Matcher, _Matcher]:
        # For Deny (False) and Allow (True): the split entries and the whole-ARN ones.
        found: dict[bool, tuple[list[list[_Token]], list[list[_Token]]]] = {
            False: ([], []),
            True: ([], []),
        }
        lookup = self._lookup
        prefix = self._prefix
        for index, statement in enumerate(self._statements):
            if not statement.actions & action or not self._holds(index, statement):
                continue
            split, whole = found[statement.allow]
            for resource in statement.resources:
                if resource.head is not None and not _head_matches(resource.head, prefix):
                    continue  # another account's or region's
                tokens = _tokens(resource.tail, lookup)
                if tokens is not None:
                    (whole if resource.head is None else split).append(tokens)
        return _matcher(*found[False]), _matcher(*found[True])

    def _holds(self, index: int, statement: _Statement) -> bool:
        known = self._applies.get(index)
        if known is None:
            known = self._applies[index] = all(
                _condition_holds(c, self._lookup) for c in statement.conditions
            )
        return known


def _matcher(split: list[list[_Token]], whole: list[list[_Token]]) -> _Matcher:
    if not split and not whole:
        return _NOTHING
    return _Matcher(split, _Matcher(whole) if whole else None)


def _condition_holds(condition: _Condition, lookup: Lookup) -> bool:
    """IAM's rules: several values of one key are alternatives (for a negated operator, none
    may match); a key the connection has no value for makes a condition false, except with
    ``IfExists`` or a negated operator; ``Null: true`` holds when the key has no value."""
    actual = lookup(condition.key)
    operator = condition.operator
    if operator == "Null":
        wanted = {_literal(v, lookup) for v in condition.values}
        return (actual is None and "true" in wanted) or (actual is not None and "false" in wanted)
    if actual is None:
        return condition.if_exists or operator in _NEGATED
    matched = any(_value_matches(operator, actual, v, lookup) for v in condition.values)
    return not matched if operator in _NEGATED else matched


def _value_matches(operator: str, actual: str, value: Template, lookup: Lookup) -> bool:
    if operator in ("StringLike", "StringNotLike"):
        tokens = _tokens(value, lookup)
        return (
            tokens is not None
            and re.fullmatch(_regex_source(tokens), actual, re.DOTALL) is not None
        )
    expected = _literal(value, lookup)
    if expected is None:
        return False
    if operator in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return expected.casefold() == actual.casefold()
    if operator == "Bool":
        return expected.lower() == actual.lower()
    return expected == actual
