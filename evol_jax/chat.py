"""Chat formats for AgentTraj conversations: the official AgentGym Llama-2 format and HF templates.

A conversation is AgentTraj's list of turns ``{"from": "human"|"gpt", "loss": None|bool,
"value": str}``. :func:`render_conversation` turns it into text segments, one per turn (plus, for
templates with a generation prompt, the assistant header as its own non-assistant segment), each
flagged ``is_assistant`` and ``loss``. Concatenated, the segments are exactly the template's
rendering of the whole conversation; tokenised one by one (as the official trainer does turn by
turn) they give the loss mask of behavioural cloning (:mod:`evol_jax.policy_data`).

Official AgentGym format (``agentenv/trainer``, ``tokenize_conversation_one``)::

    human turn:      "<s>[INST] {value} [/INST]"
    assistant turn:  " {value}</s>"

>>> conv = [{"from": "human", "loss": None, "value": "Go."}, {"from": "gpt", "loss": None,
...         "value": "Ok."}]
>>> render_conversation(conv, LLAMA2)
[('<s>[INST] Go. [/INST]', False, False), (' Ok.</s>', True, True)]

Loss flags: ``loss=True`` / ``False`` is honoured as written; ``loss=None`` takes the default
``null_loss``: ``"role"`` (assistant turns carry loss, human turns do not: the paper's "loss on
every assistant turn") or ``"none"`` (no loss: the official trainer's ``if message["loss"]``, which
treats None as False).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

Segment = tuple[str, bool, bool]  # (text, is_assistant, loss)

HUMAN_ROLES = {"human": "user", "user": "user"}
ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant"}
NULL_LOSS = ("role", "none")


@dataclasses.dataclass(frozen=True)
class Llama2Format:
    """The AgentGym Llama-2 format: ``<s>[INST] {human} [/INST]`` then `` {assistant}</s>``.

    Attributes:
      bos: the beginning-of-sequence string (recognised as a special token by the tokenizer).
      eos: the end-of-sequence string; it ends every assistant turn and carries its loss.
      assistant_space: start assistant turns with a space (the format's text). The official
        trainer tokenises ``"{value}</s>"`` without it and relies on the Llama-2 SentencePiece
        tokenizer's dummy prefix to produce the word-initial ``"▁"``; set False with such a
        tokenizer (one that prepends ``"▁"`` to every encoded text) to get the official ids.
    """

    bos: str = "<s>"
    eos: str = "</s>"
    assistant_space: bool = True

    def human(self, value: str) -> str:
        return f"{self.bos}[INST] {value} [/INST]"

    def assistant(self, value: str) -> str:
        return f"{' ' if self.assistant_space else ''}{value}{self.eos}"


LLAMA2 = Llama2Format()


class JinjaTemplate:
    """A Hugging Face chat template (Jinja), rendered as ``tokenizer.apply_chat_template`` does.

    Same environment as transformers: sandboxed, ``trim_blocks`` and ``lstrip_blocks``, loop
    controls, ``raise_exception``, ``strftime_now`` and a ``tojson`` that does not HTML-escape;
    the special-token strings (``bos_token``, ``eos_token``, ...) are template variables.

    Args:
      template: the Jinja source.
      special_tokens: ``{"bos_token": "<s>", ...}`` passed to the template.
      system: optional system message prepended to every conversation.
    """

    def __init__(
        self,
        template: str,
        special_tokens: Mapping[str, str] | None = None,
        system: str | None = None,
    ):
        if not isinstance(template, str) or not template:
            raise ValueError("JinjaTemplate: template must be a non-empty string")
        self.source = template
        self.special_tokens = dict(special_tokens or {})
        self.system = system
        self._compiled = _compile(template)

    @classmethod
    def from_tokenizer(cls, tokenizer, system: str | None = None) -> JinjaTemplate:
        """The template of an imported tokenizer (:class:`evol_jax.hf_import.HFTokenizer`)."""
        if not tokenizer.chat_template:
            raise ValueError("tokenizer has no chat_template (tokenizer_config.json / .jinja)")
        return cls(tokenizer.chat_template, tokenizer.special_tokens_map, system)

    def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        """Renders ``[{"role", "content"}, ...]`` (the system message, if any, prepended)."""
        import jinja2

        msgs = [dict(m) for m in messages]
        if self.system is not None:
            msgs = [{"role": "system", "content": self.system}] + msgs
        try:
            return self._compiled.render(
                messages=msgs,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except jinja2.TemplateError as e:
            raise ValueError(f"chat template failed on {len(msgs)} messages: {e}") from e


def _compile(template: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` renders its body (HF's assistant marker)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno
            )

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat template does not compile: {e}") from e


def turn_loss(turn: Mapping[str, Any], null_loss: str = "role") -> bool:
    """Whether a turn carries loss: its ``loss`` field, or the ``null_loss`` default when None."""
    if null_loss not in NULL_LOSS:
        raise ValueError(f"null_loss={null_loss!r}; choose one of {NULL_LOSS}")
    loss = turn.get("loss")
    if loss is None:
        return null_loss == "role" and turn["from"] in ASSISTANT_ROLES
    if not isinstance(loss, bool):
        raise ValueError(f"turn 'loss' must be null, true or false, got {loss!r}")
    return loss


def check_conversation(conversations: Sequence[Mapping[str, Any]]) -> None:
    """Raises ValueError naming the first malformed turn of an AgentTraj conversation."""
    if not isinstance(conversations, Sequence) or isinstance(conversations, str):
        raise ValueError(f"conversations must be a list of turns, got {type(conversations)}")
    if not conversations:
        raise ValueError("conversation is empty")
    for i, turn in enumerate(conversations):
        if not isinstance(turn, Mapping):
            raise ValueError(f"turn {i} is not a dict: {turn!r}")
        role = turn.get("from")
        if role not in HUMAN_ROLES and role not in ASSISTANT_ROLES:
            raise ValueError(f"turn {i}: 'from'={role!r}; expected 'human' or 'gpt'")
        if not isinstance(turn.get("value"), str):
            raise ValueError(f"turn {i}: 'value' must be a string, got {turn.get('value')!r}")


def render_conversation(
    conversations: Sequence[Mapping[str, Any]],
    template: Llama2Format | JinjaTemplate = LLAMA2,
    *,
    null_loss: str = "role",
) -> list[Segment]:
    """Renders an AgentTraj conversation into flagged text segments.

    Args:
      conversations: AgentTraj turns ``{"from", "loss", "value"}``.
      template: :data:`LLAMA2` (official AgentGym format) or a :class:`JinjaTemplate`.
      null_loss: meaning of ``loss: null`` (see the module docstring).

    Returns:
      ``[(text, is_assistant, loss), ...]``; ``"".join(texts)`` is the full rendering. With a Jinja
      template, the header a generation prompt would add before an assistant turn (e.g.
      ``<|im_start|>assistant\\n``) is a separate non-assistant, no-loss segment, so that loss
      falls on what the policy generates.

    Raises:
      ValueError: malformed turns, or a Jinja template whose rendering of a conversation prefix is
        not a prefix of the rendering of the longer conversation (then turns cannot be separated).
    """
    check_conversation(conversations)
    if isinstance(template, Llama2Format):
        out = []
        for turn in conversations:
            loss = turn_loss(turn, null_loss)
            if turn["from"] in ASSISTANT_ROLES:
                out.append((template.assistant(turn["value"]), True, loss))
            else:
                out.append((template.human(turn["value"]), False, loss))
        return out
    if not isinstance(template, JinjaTemplate):
        raise TypeError(f"template must be Llama2Format or JinjaTemplate, got {type(template)}")

    messages = [_message(t) for t in conversations]
    out: list[Segment] = []
    prev = ""
    for i, turn in enumerate(conversations):
        loss = turn_loss(turn, null_loss)
        is_assistant = turn["from"] in ASSISTANT_ROLES
        if is_assistant:
            header = template.render(messages[:i], add_generation_prompt=True) if i else ""
            _check_prefix(prev, header, i, "its generation prompt")
            if len(header) > len(prev):
                out.append((header[len(prev) :], False, False))
            prev = header
        full = template.render(messages[: i + 1], add_generation_prompt=False)
        _check_prefix(prev, full, i, "the conversation up to it")
        out.append((full[len(prev) :], is_assistant, loss))
        prev = full
    return out


def _message(turn: Mapping[str, Any]) -> dict[str, str]:
    role = HUMAN_ROLES.get(turn["from"]) or ASSISTANT_ROLES[turn["from"]]
    return {"role": role, "content": turn["value"]}


def _check_prefix(prefix: str, text: str, i: int, what: str) -> None:
    if not text.startswith(prefix):
        raise ValueError(
            f"chat template is not prefix-stable at turn {i}: rendering {what} does not extend "
            "the rendering of the earlier turns, so turns cannot be cut into segments"
        )


def render_text(
    conversations: Sequence[Mapping[str, Any]], template: Llama2Format | JinjaTemplate = LLAMA2
) -> str:
    """The whole conversation as one string (concatenated segments)."""
    return "".join(s for s, _, _ in render_conversation(conversations, template))


def generation_prompt(
    conversations: Sequence[Mapping[str, Any]], template: Llama2Format | JinjaTemplate = LLAMA2
) -> str:
    """The text a policy continues to produce the next assistant turn.

    ``conversations`` must end with a human turn. For :data:`LLAMA2` this is the rendering itself
    (the policy generates `` {action}</s>``); a Jinja template adds its generation prompt.
    """
    check_conversation(conversations)
    if conversations[-1]["from"] not in HUMAN_ROLES:
        raise ValueError("generation_prompt: the conversation must end with a human turn")
    if isinstance(template, Llama2Format):
        return render_text(conversations, template)
    return template.render([_message(t) for t in conversations], add_generation_prompt=True)
