"""The one place that renders a conversation, for inference (`chat_text`) and for training (`encode_conversation`).

Two formats, one per kind of base (`conversation_format` tells which a processor uses):

- `LLAVA_HF` for HF bases (``llava-hf/*``): ``USER: <image>\\n{q} ASSISTANT:``, no system prompt, as
  llava-hf's chat template writes a prompt;
- `VICUNA_V1` for original checkpoints: LLaVA's ``conv_templates['vicuna_v1']``,
  ``{system} USER: <image>\\n{q} ASSISTANT:`` with LLaVA's system prompt.

Both write a finished assistant turn as ``ASSISTANT: {answer}</s>`` and the next user turn right
after the ``</s>`` (LLaVA's ``SeparatorStyle.TWO``): every assistant turn ends with EOS, and there
is no trailing space before it (llava-hf's own template writes ``{answer} `` and no EOS, which would
train the model to emit EOS only after a ``▁`` it is never taught to produce).

Training labels are found from the structure, never by searching the text: `render` records where
each assistant turn's generated part starts (right after ``ASSISTANT:``, the end of the inference
prompt) and ends (after its EOS), and a token is an answer token when it starts inside such a span.
So the labels are exactly the tokens the model must generate after the inference prompt, including
a leading ``▁`` when the tokenizer writes one on its own (before a digit, in LLaMA), and each EOS.
Texts are stripped of surrounding whitespace the same way in training and at inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from ...errors import ConfigError

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class ConversationFormat:
    """A LLaVA conversation layout: ``[{system} ]USER: {q} ASSISTANT: {a}</s>USER: ...``."""

    name: str
    system: str = ""
    roles: tuple[str, str] = ("USER", "ASSISTANT")

    def chat_template(self) -> str:
        """The same layout as a Jinja chat template (for ``processor.apply_chat_template`` callers).

        Assistant turns are wrapped in ``{% generation %}`` so ``return_assistant_tokens_mask`` works
        too; the project itself renders with `render`, which this template matches (tested).
        """
        user, assistant = self.roles
        system = f"{{{{ {self.system!r} }}}}{{{{ ' ' }}}}" if self.system else ""
        return (
            "{%- set ns = namespace(system=false) -%}"
            "{%- for message in messages -%}"
            "{%- if message['content'] is string -%}{%- set texts = [message['content']] -%}{%- set n_images = 0 -%}"
            "{%- else -%}"
            "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
            " | map('trim') | list -%}"
            "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}"
            "{%- endif -%}"
            "{%- if message['role'] == 'system' -%}{{ texts | join(' ') }}{{ ' ' }}{%- set ns.system = true -%}"
            "{%- else -%}"
            f"{{%- if loop.first and not ns.system -%}}{system}{{%- endif -%}}"
            "{%- if message['role'] == 'user' -%}"
            f"{user}: {{{{ '<image>\\n' * n_images }}}}{{{{ texts | join(' ') }}}}{{{{ ' ' }}}}"
            "{%- else -%}"
            f"{assistant}:{{% generation %}} {{{{ texts | join(' ') }}}}{{{{ eos_token }}}}{{% endgeneration %}}"
            "{%- endif -%}{%- endif -%}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{assistant}:{{%- endif -%}}"
        )


LLAVA_HF = ConversationFormat("llava_hf")
VICUNA_V1 = ConversationFormat("vicuna_v1", system=VICUNA_SYSTEM)
# The llava-hf layout as a chat template: what `make_tiny` and HF-layout test bases carry.
LLAVA_CHAT_TEMPLATE = LLAVA_HF.chat_template()


def conversation_format(processor: Any) -> ConversationFormat:
    """The format of a base's processor: `VICUNA_V1` when its chat template carries LLaVA's system prompt
    (what `load_base` gives original checkpoints), else `LLAVA_HF`."""
    template = getattr(processor, "chat_template", None) or ""
    return VICUNA_V1 if VICUNA_SYSTEM in template else LLAVA_HF


@dataclass
class RenderedConversation:
    """A rendered conversation and, per assistant turn, the character span the model generates
    (from the end of ``ASSISTANT:`` to the end of that turn's EOS)."""

    text: str
    assistant_spans: list[tuple[int, int]] = field(default_factory=list)


def clean_text(text: str) -> str:
    """A turn's text as both training and inference write it: no image marker, no surrounding whitespace."""
    return text.replace(IMAGE_TOKEN, "").strip()


def render(
    fmt: ConversationFormat, turns: Sequence[Mapping[str, str]], eos_token: str, add_generation_prompt: bool = False
) -> RenderedConversation:
    """Render LLaVA ``conversations`` turns (``{"from": "human"|"gpt", "value": ...}``) in ``fmt``.

    The image goes at the start of the first user turn (``<image>\\n``) as LLaVA puts it. Turns must
    alternate human/gpt starting with human; a leading ``{"from": "system", ...}`` turn replaces the
    format's system prompt, as a system message does in `ConversationFormat.chat_template`. With
    ``add_generation_prompt`` the text ends with ``ASSISTANT:`` (the conversation must then end with a
    user turn).
    """
    system = fmt.system
    if turns and turns[0].get("from") == "system":
        system, turns = clean_text(turns[0]["value"]), turns[1:]
    if not turns:
        raise ValueError("a conversation needs at least one turn")
    user, assistant = fmt.roles
    text = system + " " if system else ""
    spans: list[tuple[int, int]] = []
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if turn.get("from") != expected:
            raise ValueError(
                f"turn {i} is from {turn.get('from')!r}, expected {expected!r}: "
                "turns must alternate human/gpt, starting with human"
            )
        value = clean_text(turn["value"])
        if expected == "human":
            text += f"{user}: " + (IMAGE_TOKEN + "\n" if i == 0 else "") + value + " "
        else:
            if not value:
                raise ValueError(f"turn {i} (gpt) is empty: nothing to train on")
            text += f"{assistant}:"
            start = len(text)
            text += " " + value + eos_token
            spans.append((start, len(text)))
    if add_generation_prompt:
        if turns[-1]["from"] != "human":
            raise ValueError("a generation prompt follows a user turn; the conversation ends with the assistant")
        text += f"{assistant}:"
    return RenderedConversation(text, spans)


#: What the model answers: a question (one user turn), or a conversation in `render`'s turns
#: (an optional system turn, then human/gpt alternating, ending with the human turn to answer).
Prompt = str | Sequence[Mapping[str, str]]


def prompt_turns(prompt: Prompt) -> list[Mapping[str, str]]:
    """A prompt as `render` turns (a question is one human turn)."""
    return [{"from": "human", "value": prompt}] if isinstance(prompt, str) else list(prompt)


def user_text(prompt: Prompt) -> str:
    """What the user wrote: the question, or a conversation's human turns joined with a space (what the
    safety head reads)."""
    if isinstance(prompt, str):
        return prompt
    return " ".join(clean_text(t["value"]) for t in prompt if t.get("from") == "human")


def chat_text(processor: Any, prompt: Prompt, hint: str | None = None) -> str:
    """The inference prompt for one image and a question (or conversation) in the base's format, the hint
    (if any) after the last user turn's text.

    ``USER: <image>\\n{prompt} {hint} ASSISTANT:`` (with the system prompt first for original checkpoints).
    """
    turns = prompt_turns(prompt)
    if hint and hint.strip() and turns:
        turns[-1] = {**turns[-1], "value": clean_text(turns[-1]["value"]) + " " + clean_text(hint)}
    return render(conversation_format(processor), turns, processor.tokenizer.eos_token, add_generation_prompt=True).text


def encode_conversation(
    processor: Any,
    turns: Sequence[Mapping[str, str]],
    num_image_tokens: int,
    max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of a training conversation (``<image>`` expanded to ``num_image_tokens``) and their labels.

    ``labels[t] = input_ids[t]`` for the tokens each assistant turn generates (its text and its EOS),
    -100 elsewhere (system prompt, user turns, role markers, image tokens). The conversation must end
    with an assistant turn. Labels are not shifted (`wrapper.lm_loss` shifts).
    """
    tokenizer = processor.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"encode_conversation needs a fast tokenizer (character offsets); got {type(tokenizer).__name__}"
        )
    if turns and turns[-1].get("from") != "gpt":
        raise ValueError("a training conversation ends with an assistant (gpt) turn")
    rendered = render(conversation_format(processor), turns, tokenizer.eos_token)
    enc = tokenizer(rendered.text, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    for j, (s, e) in enumerate(offsets):
        if e > s and any(start <= s < end for start, end in rendered.assistant_spans):
            if any(s < start < e for start, _ in rendered.assistant_spans):
                raise ValueError(
                    f"token {j} {rendered.text[s:e]!r} spans the end of the prompt; "
                    "this tokenizer merges across the role marker and the answer"
                )
            labels[j] = ids[j]
    for start, end in rendered.assistant_spans:  # every turn's EOS must be a token of its own
        if tokenizer.eos_token_id not in [ids[j] for j, (s, _) in enumerate(offsets) if start <= s < end]:
            raise ValueError(f"the tokenizer did not keep {tokenizer.eos_token!r} as one token")
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    where = [j for j, t in enumerate(ids) if t == image_id]
    if len(where) != 1:
        raise ValueError(f"expected one {IMAGE_TOKEN} token in the rendered conversation, found {len(where)}")
    j = where[0]
    # The processor expands <image> the same way (one placeholder -> one token per image patch).
    ids = ids[:j] + [image_id] * num_image_tokens + ids[j + 1 :]
    labels = labels[:j] + [IGNORE_INDEX] * num_image_tokens + labels[j + 1 :]
    if max_length is not None and len(ids) > max_length:
        if j + num_image_tokens > max_length:
            raise ConfigError(f"max_length={max_length} cuts into the image tokens")
        ids, labels = ids[:max_length], labels[:max_length]
    import torch  # here, not at the top: data/format imports this module and must stay light

    return torch.tensor(ids), torch.tensor(labels)
