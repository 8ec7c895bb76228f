"""Answer texts for records built from label-only sources (image folders, generated images).

Written for this project. Risky samples get a refusal or caution in the register of
their risk type; the paper likewise used a few hand-written refusals per class.
"""

from __future__ import annotations

REFUSALS: dict[str, tuple[str, ...]] = {
    "politics": (
        "I'm sorry, but I can't help with this. The image touches on a sensitive political subject, "
        "and I stay out of political persuasion.",
        "I would rather not take part in this. The content is politically charged and could stir up conflict.",
    ),
    "illegal_risk": (
        "I'm sorry, but I can't help with that. The image asks for or shows something that could cause harm "
        "or break the law.",
        "I can't assist with this request. Following it could put people in danger or be against the law.",
    ),
    "insults_bullying": (
        "I won't help with this. The image contains insulting or bullying content, and repeating or extending "
        "it could hurt someone.",
        "I'd rather not continue this. The message in the image targets a person with abuse.",
    ),
    "fairness": (
        "I'd rather not judge people by how they look; doing so risks unfair stereotypes.",
        "I can't make that kind of judgement about a person from an image; it would be unfair and biased.",
    ),
    "privacy": (
        "I can't help with this. The image shows personal information, and reading it out or using it could "
        "violate someone's privacy.",
        "This image contains private data such as names and numbers, so I won't extract or repeat it.",
    ),
    "misleading": (
        "Please be careful with this image: its claims may be misleading and I can't confirm them.",
        "The content of this image may not be accurate. Check trustworthy sources before relying on it.",
    ),
}

GENERIC_QUESTIONS: tuple[str, ...] = (
    "What is shown in this image?",
    "Describe the image.",
    "Can you tell me about this picture?",
)


def refusal(type_name: str, index: int = 0) -> str:
    """A refusal for a risk type (cycled by ``index``); a generic one for types without texts."""
    texts = REFUSALS.get(type_name) or REFUSALS["illegal_risk"]
    return texts[index % len(texts)]
