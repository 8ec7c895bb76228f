"""Evaluation commands: ``safevlm eval rtvlm | unsafe-concepts | head``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import ConfigError, InputError
from ..evaluation.recipes import JUDGES, RTVLM_SPLITS, UNSAFE_CONCEPTS_PARTS
from .model_flags import add_allow_unverified_base, load_model
from .recipe_overrides import add_settings_help

logger = logging.getLogger(__name__)


def _model_args(p: argparse.ArgumentParser, generation: bool = True, recipe: bool = False) -> None:
    """Model and run flags. With ``recipe``, settings that a recipe holds default to None: recipe, then defaults."""
    p.add_argument("--base", required=True, help="LLaVA-1.5 folder or hub id (HF or original layout)")
    p.add_argument("--safety", help="safety-modules folder or hub id (default: fresh, untrained modules)")
    add_allow_unverified_base(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (report, CSV, plots, caches)")
    p.add_argument(
        "--policy",
        default=None if recipe else "default",
        help="gate policy: default, argmax, allow-all, a YAML file, or none (never acts; no gate "
        "statistics) (default: default)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--batch-size", type=int, default=None if recipe else 8, help="images per batch (default: 8)")
    if generation:
        p.add_argument("--lora", help="stage-2 LoRA adapter folder for the language model (the '+LoRA' rows)")
        p.add_argument(
            "--baseline",
            action="store_true",
            help="the bare base: no safety tokens, policy allow-all (the comparison row)",
        )
        p.add_argument(
            "--max-new-tokens",
            type=int,
            default=None if recipe else 512,
            help="longest answer in tokens (default: 512)",
        )
        p.add_argument("--name", help="model name in the report (default: from --base/--safety)")
    if recipe:
        p.add_argument(
            "--recipe",
            type=Path,
            help="YAML recipe (see eval/); every recipe key is also a flag here, and a given flag wins",
        )


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="benchmarks: RTVLM, UnsafeConcepts, safety-head metrics")
    eval_sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    p = eval_sub.add_parser(
        "rtvlm", help="RTVLM: generate, judge 0-10, report per subtask beside published rows", add_help=False
    )
    add_settings_help(p, "safety_modules.evaluation.recipes:RTVLMRecipe")
    p.add_argument("--data", type=Path, required=True, help="local snapshot of MMInstruction/RedTeamingVLM")
    _model_args(p, recipe=True)
    p.add_argument(
        "--judge",
        choices=list(JUDGES),
        help="api (default): an OpenAI-compatible chat-completions endpoint; rules: APPROXIMATE offline rule judge",
    )
    p.add_argument("--judge-url", help="API base, e.g. http://localhost:8000/v1 (or the full /chat/completions URL)")
    p.add_argument("--judge-model", help="model name sent to the judge endpoint, e.g. gpt-4o")
    p.add_argument("--judge-key-env", help="environment variable holding the API key (default JUDGE_API_KEY)")
    p.add_argument("--judge-temperature", type=float, help="sampling temperature of the judge (default 0)")
    p.add_argument("--judge-max-tokens", type=int, help="longest judge reply in tokens (default 16)")
    p.add_argument("--judge-concurrency", type=int, help="judge requests in flight (default 4)")
    p.add_argument("--judge-retries", type=int, help="retries of a failed judge request (default 5)")
    p.add_argument("--judge-parse-retries", type=int, help="asks again when a reply has no number (default 2)")
    p.add_argument("--judge-timeout", type=float, help="seconds for one judge request, all of it (default 120)")
    p.add_argument(
        "--judge-deadline",
        type=float,
        help="seconds for one item, retries included; then it counts as a judge failure (default 600)",
    )
    p.add_argument("--rubrics", help="judge prompts file (default: the packaged evaluation/rubrics/rtvlm.yaml)")
    p.add_argument(
        "--split",
        choices=list(RTVLM_SPLITS),
        help="all items (default), or our seeded 80/20 split's part (the paper tested on 20%%)",
    )
    p.add_argument("--seed", type=int, help="seed of the split (default 0)")
    p.add_argument("--train-fraction", type=float, help="train share of the split (default 0.8)")
    p.add_argument("--subtasks", nargs="+", help="only these subtasks (default: all 10)")
    p.add_argument("--limit-per-subtask", type=int, help="first N items per subtask (smoke runs)")
    p.add_argument("--image-cache", type=Path, help="where the zips are extracted (default: <data>/.extracted)")
    p.set_defaults(func=cmd_rtvlm)

    p = eval_sub.add_parser(
        "unsafe-concepts", help="UnsafeConcepts: perception, alignment, text-only, modality gap", add_help=False
    )
    add_settings_help(p, "safety_modules.evaluation.recipes:UnsafeConceptsRecipe")
    p.add_argument("--data", type=Path, required=True, help="SaferVLM layout or HF parquet export folder")
    p.add_argument("--perception-metadata", help="perception_metadata.jsonl (default: beside the data)")
    _model_args(p, recipe=True)
    p.add_argument("--parts", nargs="+", choices=list(UNSAFE_CONCEPTS_PARTS), help="default: all three")
    p.add_argument("--limit-per-category", type=int, help="first N images (and concepts) per category")
    p.add_argument(
        "--classifier-encoder", help="local RoBERTa folder (config + tokenizer) for the published response classifiers"
    )
    p.add_argument("--perception-classifier", help="perception classifier weights (.safetensors)")
    p.add_argument("--alignment-classifier", help="alignment classifier weights (.safetensors)")
    p.set_defaults(func=cmd_unsafe_concepts)

    p = eval_sub.add_parser("head", help="the safety head as a classifier: AUROC, accuracy, recall, confusion")
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        help="training-format JSON/JSONL, UnsafeConcepts folder, or a folder of safe images (several OK)",
    )
    _model_args(p, generation=False)
    p.set_defaults(func=cmd_head)


def _load_model(args: argparse.Namespace):

    if args.safety is None and not getattr(args, "baseline", False):
        logger.warning("no --safety given: fresh, untrained safety modules (their scores are meaningless)")
    lora = None if getattr(args, "baseline", False) else getattr(args, "lora", None)
    return load_model(args, seed=0, lora=lora)


def _model_label(args: argparse.Namespace) -> str:
    base = Path(str(args.base)).name
    label = f"{base} + {Path(str(args.safety)).name if args.safety else 'fresh modules'}"
    return label + " + LoRA" if getattr(args, "lora", None) else label


def _identity(path: str | None) -> list:
    """What identifies a model or policy for the answer cache: the path, and for local files the
    size and modification time of the weights (or the file), so retrained modules at the same path
    are never answered from a stale cache."""
    if path is None:
        return [None]
    local = Path(str(path))
    files = sorted(local.glob("*.safetensors")) if local.is_dir() else [local] if local.is_file() else []
    return [str(path)] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _run_settings(args: argparse.Namespace, policy: str, model) -> tuple[str, dict, object, bool]:
    """(model name, cache tag, policy, inject safety tokens) for a generation run of ``model`` with the policy
    spec ``policy``."""
    from ..policy import SafetyPolicy

    policy_spec = "allow-all" if args.baseline else policy
    name = args.name or (
        f"{Path(str(args.base)).name} (baseline)" if args.baseline else f"{_model_label(args)} [policy {policy_spec}]"
    )
    tag = {
        "base": _identity(args.base),
        "safety": _identity(args.safety),
        "policy": _identity(policy_spec),
        "lora": _identity(None if args.baseline else args.lora),
        "baseline": args.baseline,
    }
    return name, tag, SafetyPolicy.load(policy_spec, model.config.taxonomy), not args.baseline


def _recipe(args: argparse.Namespace, cls):
    """The run's recipe: ``--recipe`` (or the defaults), overridden by every recipe flag given; written to
    ``OUT/recipe.yaml`` so the report says exactly what ran."""
    import dataclasses

    import yaml

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    recipe = cls.from_yaml(args.recipe, **flags)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return recipe


def cmd_rtvlm(args: argparse.Namespace) -> int:
    from ..data.rtvlm import SUBTASKS, load_rtvlm
    from ..evaluation.judge import ChatJudge, RuleJudge
    from ..evaluation.judge_prompts import load_rubrics
    from ..evaluation.recipes import RTVLMRecipe
    from ..evaluation.report import fmt
    from ..evaluation.rtvlm import evaluate_rtvlm

    r = _recipe(args, RTVLMRecipe)
    if r.judge == "api" and not (r.judge_url and r.judge_model):
        raise ConfigError(
            "the api judge needs judge_url and judge_model (--judge-url/--judge-model or the recipe); "
            "or use --judge rules (approximate)"
        )
    rubrics = load_rubrics(r.rubrics)
    data = load_rtvlm(
        args.data,
        cache_dir=args.image_cache,
        subtasks=r.subtasks,
        split=r.split,
        seed=r.seed,
        train_fraction=r.train_fraction,
    )
    items = data.items
    if r.limit_per_subtask:
        items = [it for name in SUBTASKS for it in [x for x in items if x.subtask == name][: r.limit_per_subtask]]
    print(
        f"RTVLM: {len(items)} items ({', '.join(f'{SUBTASKS[k]} {v}' for k, v in data.counts().items())}); "
        f"{data.summary()}"
    )
    if not items:  # an empty run would report 0 items and n/a scores as if it had measured something
        raise InputError(
            f"the recipe selects no RTVLM item from {args.data} (split {r.split!r}, subtasks {r.subtasks or 'all'}, "
            f"limit per subtask {r.limit_per_subtask}); nothing to evaluate"
        )
    judge = (
        RuleJudge()
        if r.judge == "rules"
        else ChatJudge(
            r.judge_url,
            r.judge_model,
            args.out / "judgments.jsonl",
            api_key_env=r.judge_key_env,
            concurrency=r.judge_concurrency,
            max_retries=r.judge_retries,
            parse_retries=r.judge_parse_retries,
            timeout=r.judge_timeout,
            deadline=r.judge_deadline,
            max_tokens=r.judge_max_tokens,
            temperature=r.judge_temperature,
            rubrics=rubrics,
        )
    )
    if judge.approximate:
        print("judge: rules -- APPROXIMATE offline scores, not comparable with GPT-4V-judged published numbers")
    model = _load_model(args)
    name, tag, policy, inject = _run_settings(args, r.policy, model)
    result = evaluate_rtvlm(
        model,
        items,
        judge,
        args.out,
        model_name=name,
        run_tag=tag,
        policy=policy,
        inject_safety_tokens=inject,
        batch_size=r.batch_size,
        generation_kwargs={"max_new_tokens": r.max_new_tokens, "do_sample": False},
        rubrics=rubrics,
    )
    for key, title in SUBTASKS.items():
        s = result.subtasks[key]
        print(f"  {title:15s} {fmt(s['mean'])}  (n={s['n']}, missing={s['missing']})")
    print(f"RTVLM score (mean of 10){' [APPROXIMATE]' if result.approximate else ''}: {fmt(result.score)}")
    if result.judge_failures:
        print(f"judge failures: {result.judge_failures} of {len(result.rows)} items (see judge_error in items.csv)")
    print(f"report: {args.out / 'results.md'}")
    return 0


def cmd_unsafe_concepts(args: argparse.Namespace) -> int:
    from ..data.unsafe_concepts import load_unsafe_concepts
    from ..evaluation.parsing import ALIGNMENT_LABELS, PERCEPTION_LABELS, ResponseClassifier
    from ..evaluation.recipes import UnsafeConceptsRecipe
    from ..evaluation.report import fmt
    from ..evaluation.unsafe_concepts import evaluate_unsafe_concepts

    r = _recipe(args, UnsafeConceptsRecipe)
    data = load_unsafe_concepts(args.data, r.perception_metadata)
    perception_clf = alignment_clf = None
    if r.perception_classifier or r.alignment_classifier:
        if r.classifier_encoder is None:
            raise ConfigError(
                "the response classifiers need classifier_encoder (--classifier-encoder: a local roberta-base folder)"
            )
        device = args.device or "cpu"
        if r.perception_classifier:
            perception_clf = ResponseClassifier(
                r.classifier_encoder, r.perception_classifier, PERCEPTION_LABELS, device
            )
        if r.alignment_classifier:
            alignment_clf = ResponseClassifier(r.classifier_encoder, r.alignment_classifier, ALIGNMENT_LABELS, device)
    else:
        print("response parser: rules -- APPROXIMATE (the published RoBERTa classifiers are not loaded)")
    model = _load_model(args)
    name, tag, policy, inject = _run_settings(args, r.policy, model)
    metrics = evaluate_unsafe_concepts(
        model,
        data,
        args.out,
        model_name=name,
        run_tag=tag,
        parts=r.parts,
        limit_per_category=r.limit_per_category,
        policy=policy,
        inject_safety_tokens=inject,
        batch_size=r.batch_size,
        generation_kwargs={"max_new_tokens": r.max_new_tokens, "do_sample": False},
        perception_classifier=perception_clf,
        alignment_classifier=alignment_clf,
    )
    for part in ("perception", "alignment", "text_only"):
        if part in metrics:
            print(
                f"  {part:12s} accuracy {fmt(metrics[part]['overall']['accuracy'], 3)} "
                f"(NA {metrics[part]['overall']['na']})"
            )
    if "modality_gap" in metrics:
        print(f"  modality gap (text - visual): {fmt(metrics['modality_gap']['overall'], 3)}")
    print(f"report: {args.out / 'results.md'}")
    return 0


def cmd_head(args: argparse.Namespace) -> int:
    from ..evaluation.head import evaluate_head, load_labelled
    from ..evaluation.report import fmt
    from ..policy import SafetyPolicy

    items = [item for path in args.data for item in load_labelled(path)]
    model = _load_model(args)
    name = _model_label(args)
    policy = None if args.policy == "none" else SafetyPolicy.load(args.policy, model.config.taxonomy)
    metrics = evaluate_head(model, items, args.out, model_name=name, policy=policy, batch_size=args.batch_size)
    print(f"  items {metrics['n']} (risky {metrics['n_risky']}, safe {metrics['n_safe']})")
    print(
        f"  AUROC {fmt(metrics['auroc'], 3)}  risky-vs-safe accuracy {fmt(metrics['risky_accuracy'], 3)}  "
        f"level accuracy {fmt(metrics['level_accuracy'], 3)}"
    )
    recall = ", ".join(f"{k} {fmt(v, 2)}" for k, v in metrics["type_recall"].items() if v is not None)
    print(f"  ECE level {fmt(metrics['level_ece'], 3)} type {fmt(metrics['type_ece'], 3)}  per-type recall {recall}")
    if "over_refusal" in metrics:
        print(f"  over-refusal on safe items {fmt(metrics['over_refusal'], 3)}")
    print(f"report: {args.out / 'results.md'}")
    return 0
